import COpenSSL

/// The subject of a DER-encoded X.509 certificate as RFC 2253 writes it
/// ("CN=ci,O=platform"): how the access log names a client that presented
/// a certificate under mutual TLS. Nil when the bytes are no certificate.
public func certificateSubject(derEncoded der: [UInt8]) -> String? {
    der.withUnsafeBufferPointer { bytes -> String? in
        var cursor: UnsafePointer<UInt8>? = bytes.baseAddress
        guard let certificate = d2i_X509(nil, &cursor, bytes.count) else { return nil }
        defer { X509_free(certificate) }
        guard let name = X509_get_subject_name(certificate), let bio = BIO_new(BIO_s_mem()) else { return nil }
        defer { BIO_free(bio) }
        guard X509_NAME_print_ex(bio, name, 0, backupd_xn_flag_rfc2253()) >= 0 else { return nil }
        var text = [UInt8](repeating: 0, count: 1024)
        let length = BIO_read(bio, &text, Int32(text.count))
        return String(decoding: text.prefix(Int(max(0, length))), as: UTF8.self)
    }
}
