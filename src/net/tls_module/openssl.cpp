// libultari_tls.so: the OpenSSL side of net/tls.h. Built as a module and
// loaded with dlopen (see tls.h for why); it exports one factory.
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstring>
#include <map>
#include <mutex>

#include "net/tls.h"
#include "util/error.h"

namespace ultari::net::tls {
namespace {

constexpr long kCaDays = 30;
constexpr long kLeafDays = 7;
constexpr unsigned char kAlpn[] = "\x08http/1.1";

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using KeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using CtxPtr = std::unique_ptr<SSL_CTX, Deleter<SSL_CTX, SSL_CTX_free>>;

std::string openssl_error(const std::string& what) {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return what;
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return what + ": " + buf;
}

void check(int ok, const char* what) {
  if (ok != 1) throw Error(openssl_error(what));
}

KeyPtr new_key() {
  KeyPtr key(EVP_EC_gen("P-256"));
  if (!key) throw Error(openssl_error("EC key generation"));
  return key;
}

void add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (!ext) throw Error(openssl_error(std::string("certificate extension ") + OBJ_nid2sn(nid)));
  int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  check(ok, "X509_add_ext");
}

// A certificate for `subject_cn` with `key`, to be signed by `issuer` (itself
// when null).
X509Ptr make_cert(const std::string& subject_cn, EVP_PKEY* key, X509* issuer, long days) {
  X509Ptr cert(X509_new());
  if (!cert) throw Error(openssl_error("X509_new"));
  check(X509_set_version(cert.get(), 2), "X509_set_version");
  unsigned char serial[16];
  check(RAND_bytes(serial, sizeof serial), "RAND_bytes");
  serial[0] &= 0x7f;  // positive
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  ASN1_INTEGER* sn = bn ? BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get())) : nullptr;
  BN_free(bn);
  if (!sn) throw Error(openssl_error("certificate serial"));
  // An hour back: clocks of the sandbox and the host agree, others may not.
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), days * 86400);
  X509_NAME* name = X509_get_subject_name(cert.get());
  std::string cn = subject_cn.substr(0, 64);  // the CN's upper bound; the SAN holds the full name
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("Ultari"), -1, -1, 0);
  check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(cn.c_str()), -1,
                                   -1, 0),
        "certificate name");
  X509* signer = issuer ? issuer : cert.get();
  check(X509_set_issuer_name(cert.get(), X509_get_subject_name(signer)), "X509_set_issuer_name");
  check(X509_set_pubkey(cert.get(), key), "X509_set_pubkey");
  return cert;
}

void sign(X509* cert, EVP_PKEY* key) {
  if (X509_sign(cert, key, EVP_sha256()) <= 0) throw Error(openssl_error("X509_sign"));
}

std::string pem_of(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  check(PEM_write_bio_X509(bio.get(), cert), "PEM_write_bio_X509");
  char* data;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

std::string pem_of(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  check(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr), "PEM_write_bio_PrivateKey");
  char* data;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned inlen, void*) {
  // HTTP/1.1 only: requests are followed one by one (HTTP/2 would hide
  // them in HPACK frames). A client that offers no HTTP/1.1 gets no ALPN.
  unsigned char* sel = nullptr;
  if (SSL_select_next_proto(&sel, outlen, kAlpn, sizeof kAlpn - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  *out = sel;
  return SSL_TLSEXT_ERR_OK;
}

class OpenSslConn : public Conn {
 public:
  explicit OpenSslConn(SSL* ssl) : ssl_(ssl) {}
  ~OpenSslConn() override { SSL_free(ssl_); }

  Status handshake() override { return status(SSL_do_handshake(ssl_)); }
  Status read(char* buf, size_t len, size_t& n) override {
    n = 0;
    Status s = status(SSL_read_ex(ssl_, buf, len, &n));
    return s;
  }
  Status write(const char* buf, size_t len, size_t& n) override {
    n = 0;
    return status(SSL_write_ex(ssl_, buf, len, &n));
  }
  size_t pending() override { return static_cast<size_t>(SSL_pending(ssl_)); }
  void close_notify() override {
    SSL_shutdown(ssl_);
    ERR_clear_error();
  }
  std::string error() override { return error_; }
  std::string alpn() override {
    const unsigned char* p = nullptr;
    unsigned len = 0;
    SSL_get0_alpn_selected(ssl_, &p, &len);
    return p ? std::string(reinterpret_cast<const char*>(p), len) : std::string();
  }

 private:
  Status status(int rc) {
    if (rc == 1) return kOk;
    int e = SSL_get_error(ssl_, rc);
    switch (e) {
      case SSL_ERROR_WANT_READ: return kWantRead;
      case SSL_ERROR_WANT_WRITE: return kWantWrite;
      case SSL_ERROR_ZERO_RETURN: return kClosed;
      default: break;
    }
    long verify = SSL_get_verify_result(ssl_);
    if (verify != X509_V_OK)
      error_ = std::string("certificate verify failed: ") + X509_verify_cert_error_string(verify);
    else if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
      error_ = errno ? std::string("TLS: ") + std::strerror(errno) : "TLS: connection closed";
    else
      error_ = openssl_error("TLS");
    ERR_clear_error();
    return kFailed;
  }
  SSL* ssl_;
  std::string error_;
};

class OpenSslEngine : public Engine {
 public:
  bool make_ca(const std::string& label, Ca& out, std::string& error) override {
    return guard(error, [&] { out = make_ca_or_throw(label); });
  }
  bool serve_with(const Ca& ca, const std::string& extra_ca_pem, std::string& error) override {
    return guard(error, [&] { serve_with_or_throw(ca, extra_ca_pem); });
  }
  std::unique_ptr<Conn> accept(int fd, const std::string& name, std::string& error) override {
    std::unique_ptr<Conn> c;
    guard(error, [&] { c = accept_or_throw(fd, name); });
    return c;
  }
  std::unique_ptr<Conn> connect(int fd, const std::string& name, std::string& error) override {
    std::unique_ptr<Conn> c;
    guard(error, [&] { c = connect_or_throw(fd, name); });
    return c;
  }

 private:
  template <typename F>
  static bool guard(std::string& error, F&& f) {
    try {
      f();
      return true;
    } catch (const std::exception& e) {
      error = e.what();
    } catch (...) {
      error = "TLS: unexpected failure";
    }
    ERR_clear_error();
    return false;
  }

  Ca make_ca_or_throw(const std::string& label) {
    KeyPtr key = new_key();
    X509Ptr cert = make_cert("Ultari sandbox CA " + label, key.get(), nullptr, kCaDays);
    add_ext(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
    add_ext(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(cert.get(), cert.get(), NID_subject_key_identifier, "hash");
    sign(cert.get(), key.get());
    return Ca{pem_of(cert.get()), pem_of(key.get())};
  }

  void serve_with_or_throw(const Ca& ca, const std::string& extra_ca_pem) {
    BioPtr cb(BIO_new_mem_buf(ca.cert_pem.data(), static_cast<int>(ca.cert_pem.size())));
    ca_cert_.reset(PEM_read_bio_X509(cb.get(), nullptr, nullptr, nullptr));
    BioPtr kb(BIO_new_mem_buf(ca.key_pem.data(), static_cast<int>(ca.key_pem.size())));
    ca_key_.reset(PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr));
    if (!ca_cert_ || !ca_key_) throw Error(openssl_error("the sandbox's CA"));
    leaf_key_ = new_key();

    server_.reset(SSL_CTX_new(TLS_server_method()));
    client_.reset(SSL_CTX_new(TLS_client_method()));
    if (!server_ || !client_) throw Error(openssl_error("SSL_CTX_new"));
    for (SSL_CTX* c : {server_.get(), client_.get()}) {
      SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
      // A peer that drops the connection without close_notify: an end, as
      // plain TCP would see it (HTTP framing tells truncation apart).
      SSL_CTX_set_options(c, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
      SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    SSL_CTX_set_alpn_select_cb(server_.get(), select_alpn, nullptr);
    SSL_CTX_set_session_cache_mode(server_.get(), SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(server_.get(), 0);

    SSL_CTX_set_verify(client_.get(), SSL_VERIFY_PEER, nullptr);
    check(SSL_CTX_set_default_verify_paths(client_.get()), "the host's trust store");
    if (!extra_ca_pem.empty()) {
      BioPtr eb(BIO_new_mem_buf(extra_ca_pem.data(), static_cast<int>(extra_ca_pem.size())));
      X509_STORE* store = SSL_CTX_get_cert_store(client_.get());
      int added = 0;
      while (X509* x = PEM_read_bio_X509(eb.get(), nullptr, nullptr, nullptr)) {
        X509_STORE_add_cert(store, x);
        X509_free(x);
        ++added;
      }
      ERR_clear_error();
      if (added == 0) throw Error("--net-ca: no PEM certificate in the file");
    }
    check(SSL_CTX_set_alpn_protos(client_.get(), kAlpn, sizeof kAlpn - 1) == 0 ? 1 : 0, "ALPN");
  }

  std::unique_ptr<Conn> accept_or_throw(int fd, const std::string& name) {
    X509Ptr leaf = leaf_for(name);
    SSL* ssl = SSL_new(server_.get());
    if (!ssl) throw Error(openssl_error("SSL_new"));
    auto conn = std::make_unique<OpenSslConn>(ssl);
    if (SSL_use_certificate(ssl, leaf.get()) != 1 || SSL_use_PrivateKey(ssl, leaf_key_.get()) != 1 ||
        SSL_set_fd(ssl, fd) != 1)
      throw Error(openssl_error("TLS server setup"));
    SSL_set_accept_state(ssl);
    return conn;
  }

  std::unique_ptr<Conn> connect_or_throw(int fd, const std::string& name) {
    SSL* ssl = SSL_new(client_.get());
    if (!ssl) throw Error(openssl_error("SSL_new"));
    auto conn = std::make_unique<OpenSslConn>(ssl);
    if (SSL_set_tlsext_host_name(ssl, name.c_str()) != 1 || SSL_set1_host(ssl, name.c_str()) != 1 ||
        SSL_set_fd(ssl, fd) != 1)
      throw Error(openssl_error("TLS client setup"));
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    SSL_set_connect_state(ssl);
    return conn;
  }

  // One certificate per name, made on first use (a reference of its own:
  // the cache may drop it meanwhile).
  X509Ptr leaf_for(const std::string& name) {
    std::lock_guard lock(mu_);
    auto it = leaves_.find(name);
    if (it != leaves_.end()) {
      X509_up_ref(it->second.get());
      return X509Ptr(it->second.get());
    }
    X509Ptr cert = make_cert(name, leaf_key_.get(), ca_cert_.get(), kLeafDays);
    add_ext(cert.get(), ca_cert_.get(), NID_basic_constraints, "critical,CA:FALSE");
    add_ext(cert.get(), ca_cert_.get(), NID_key_usage, "critical,digitalSignature");
    add_ext(cert.get(), ca_cert_.get(), NID_ext_key_usage, "serverAuth");
    add_ext(cert.get(), ca_cert_.get(), NID_subject_alt_name, ("DNS:" + name).c_str());
    add_ext(cert.get(), ca_cert_.get(), NID_authority_key_identifier, "keyid:always");
    sign(cert.get(), ca_key_.get());
    if (leaves_.size() >= 1024) leaves_.clear();  // a sandbox cycling through names
    X509_up_ref(cert.get());
    X509Ptr mine(cert.get());
    leaves_.emplace(name, std::move(cert));
    return mine;
  }

  std::mutex mu_;
  X509Ptr ca_cert_;
  KeyPtr ca_key_, leaf_key_;
  CtxPtr server_, client_;
  std::map<std::string, X509Ptr> leaves_;
};

}  // namespace
}  // namespace ultari::net::tls

extern "C" __attribute__((visibility("default"))) ultari::net::tls::Engine* ultari_tls_engine_create() {
  return new ultari::net::tls::OpenSslEngine();
}
