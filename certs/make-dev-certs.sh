#!/usr/bin/env bash
# Makes a development CA and, signed by it, a server certificate (localhost,
# 127.0.0.1, ::1) and a client certificate, in the folder given (default
# certs/dev). Keys stay in that folder, which git ignores. Existing
# certificates are kept while they are valid for another day.
set -euo pipefail
dir=${1:-certs/dev}
mkdir -p "$dir"
cd "$dir"
# The key that signs download URLs (a KEY_ID = SECRET line), made once and kept.
if [ ! -s download-keys ]; then
  (umask 077; printf 'dev-%s = %s\n' "$(date +%Y%m%d)" "$(openssl rand -base64 32)" > download-keys)
fi
# The master key that wraps each namespace's data key (encryption at rest), made once and kept: a new one
# would leave what the old one wrapped unreadable.
if [ ! -s storage-keys ]; then
  (umask 077; printf 'dev-%s = %s\n' "$(date +%Y%m%d)" "$(openssl rand -base64 32)" > storage-keys)
fi
if [ -f server.crt ] && [ -f server.key ] && [ -f client.crt ] && openssl x509 -checkend 86400 -noout -in server.crt >/dev/null 2>&1; then
  exit 0
fi
umask 077
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 825 -subj "/CN=backupd development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt

issue() { # name subject extensions
  key "$1.key"
  openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 397 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue server "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature"
issue client "/CN=backupctl" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
chmod 644 ca.crt server.crt client.crt
echo "development certificates in $(pwd)"
