import COpenSSL

/// Whether a PEM private key is the key of the first certificate of a PEM
/// chain: TLS libraries take a mismatched pair and fail every handshake
/// afterwards, so a reload checks the pair before it serves with it.
public func privateKey(pem keyPEM: [UInt8], matchesCertificate certificatePEM: [UInt8]) -> Bool {
    guard let certificate = readPEM(certificatePEM, { PEM_read_bio_X509($0, nil, nil, nil) }) else { return false }
    defer { X509_free(certificate) }
    guard let key = readPEM(keyPEM, { PEM_read_bio_PrivateKey($0, nil, nil, nil) }) else { return false }
    defer { EVP_PKEY_free(key) }
    return X509_check_private_key(certificate, key) == 1
}

private func readPEM<T>(_ pem: [UInt8], _ read: (OpaquePointer) -> T?) -> T? {
    pem.withUnsafeBytes { bytes -> T? in
        guard let bio = BIO_new_mem_buf(bytes.baseAddress, Int32(bytes.count)) else { return nil }
        defer { BIO_free(bio) }
        return read(bio)
    }
}
