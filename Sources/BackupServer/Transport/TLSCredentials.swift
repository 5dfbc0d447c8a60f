import BackupRules
import BackupStorage
import Foundation
import NIOSSL
import Synchronization

/// The certificate chain, key and client CA a TLS listener serves with,
/// read from their files. A reload reads them again and checks them whole
/// (each file reads, the key is the certificate's) before anything
/// changes; then connections accepted from that moment are handshaken with
/// the new ones, while open connections keep those they began with.
public final class TLSCredentials: Sendable {
    /// What one reading of the files made: the context handshakes use, and what the log and metrics say of it.
    struct Loaded: Sendable {
        let context: NIOSSLContext
        /// The certificate's serial number in hex, as `openssl x509 -serial` prints it.
        let serial: String
        /// When the certificate's validity ends, in Unix seconds.
        let notAfter: Double

        var summary: String {
            "certificate serial \(serial), valid until \(Date(timeIntervalSince1970: notAfter).formatted(.iso8601))"
        }
    }

    let settings: TLSSettings
    private let current = Mutex<Loaded?>(nil)

    public init(_ settings: TLSSettings) {
        self.settings = settings
    }

    /// The credentials in use, once the listener has read them.
    var inUse: Loaded? { current.withLock { $0 } }

    /// Reads and checks the files as a start would, using nothing, for
    /// `backupd config check`: which certificate they hold.
    public func check() throws(BackupError) -> String { try load().summary }

    /// Reads and checks the files; nothing changes until `use`.
    func load() throws(BackupError) -> Loaded {
        // Each file is read once: what TLS serves with is what was checked.
        let certificatePEM = try readSmallFile(settings.certificateChainPath, "the certificate chain")
        let keyPEM = try readSmallFile(settings.privateKeyPath, "the private key")
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMBytes(certificatePEM)
        } catch {
            throw .invalidArgument("cannot read the certificate chain \(settings.certificateChainPath): \(error)")
        }
        guard let leaf = chain.first else {
            throw .invalidArgument("the certificate chain \(settings.certificateChainPath) holds no certificate")
        }
        do {
            key = try NIOSSLPrivateKey(bytes: keyPEM, format: .pem)
        } catch {
            throw .invalidArgument("cannot read the private key \(settings.privateKeyPath): \(error)")
        }
        guard privateKey(pem: keyPEM, matchesCertificate: certificatePEM) else {
            throw .invalidArgument("the private key \(settings.privateKeyPath) does not match the certificate \(settings.certificateChainPath)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) },
                                                                     privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        // TLS 1.2 with forward-secret AEAD suites only (TLS 1.3's are all AEAD): no CBC, no SHA-1 MACs.
        configuration.cipherSuites = TLSListener.tls12CipherSuites
        configuration.applicationProtocols = [ALPN.rpc, ALPN.http]
        // A closing connection waits this long for the client's close_notify before its socket goes: closed
        // connections (evicted, timed out) must give their descriptors back at once, not linger by the thousand.
        configuration.shutdownTimeout = .milliseconds(100)
        if let clientCA = settings.clientCAPath {
            let authorityPEM = try readSmallFile(clientCA, "the client CA")
            let authorities: [NIOSSLCertificate]
            do {
                authorities = try NIOSSLCertificate.fromPEMBytes(authorityPEM)
            } catch {
                throw .invalidArgument("cannot read the client CA \(clientCA): \(error)")
            }
            guard !authorities.isEmpty else { throw .invalidArgument("the client CA \(clientCA) holds no certificate") }
            configuration.trustRoots = .certificates(authorities)
            configuration.certificateVerification = .noHostnameVerification
        }
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw .invalidArgument("cannot serve TLS with \(settings.certificateChainPath) and \(settings.privateKeyPath): \(error)")
        }
        let serial = leaf.serialNumber.drop { $0 == 0 }.map { String(format: "%02X", $0) }.joined()
        return Loaded(context: context, serial: serial.isEmpty ? "00" : serial, notAfter: Double(leaf.notValidAfter))
    }

    func use(_ loaded: Loaded) {
        current.withLock { $0 = loaded }
    }
}
