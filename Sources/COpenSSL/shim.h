#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/bio.h>
#include <openssl/pem.h>

/* XN_FLAG_RFC2253 is a macro of casts Swift does not import. */
static inline unsigned long backupd_xn_flag_rfc2253(void) { return XN_FLAG_RFC2253; }
