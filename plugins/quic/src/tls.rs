//! Certificates, fingerprints and the rustls configurations of both sides.
//!
//! Everything here uses the ring crypto provider, passed explicitly to the
//! config builders: nothing depends on a process-wide default provider.

use std::fmt::{self, Write as _};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::ALPN;

/// Length of a fingerprint: SHA-256 in hexadecimal.
pub(crate) const FINGERPRINT_HEX_LEN: usize = 64;

/// The ring crypto provider, as every config of this crate uses it.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER encoding, in lowercase hexadecimal.
pub(crate) fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut hex = String::with_capacity(FINGERPRINT_HEX_LEN);
    for b in digest.as_ref() {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// A server's certificate chain and private key.
pub(crate) struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Fingerprint of the end-entity certificate (the first of the chain).
    pub(crate) fingerprint: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh self-signed certificate (ECDSA P-256) with a new key.
    pub(crate) fn self_signed() -> Result<Self, rcgen::Error> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        Ok(Self {
            fingerprint: fingerprint(&cert),
            chain: vec![cert],
            key,
        })
    }

    /// A chain and key read from PEM files; the end-entity certificate comes
    /// first in `cert`.
    pub(crate) fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, String> {
        let chain = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
        let fingerprint = chain.first().map(fingerprint).unwrap_or_default();
        Ok(Self {
            chain,
            key,
            fingerprint,
        })
    }
}

/// Every certificate of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = |e: rustls::pki_types::pem::Error| {
        format!("cannot read certificates from {}: {e}", path.display())
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(what)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(what)?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// Loads a PEM bundle of trusted CA certificates.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate in {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The TLS 1.3 server configuration presenting `identity`.
pub(crate) fn server_crypto(
    provider: &Arc<CryptoProvider>,
    identity: &Identity,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// How a client checks the server's certificate.
#[derive(Debug, Clone)]
pub(crate) enum ServerCheck {
    /// The end-entity certificate must have this SHA-256 fingerprint.
    Pinned(String),
    /// WebPKI verification against these roots, for the server name.
    Roots(Arc<RootCertStore>),
    /// No check of the certificate (handshake signatures are still checked).
    Insecure,
}

/// The TLS 1.3 client configuration for `check`. With a fingerprint, the
/// fingerprint the server presented is stored into `presented`.
pub(crate) fn client_crypto(
    provider: &Arc<CryptoProvider>,
    check: &ServerCheck,
    presented: &Arc<Mutex<Option<String>>>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = match check {
        ServerCheck::Roots(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        ServerCheck::Pinned(expected) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                expected: Some(expected.clone()),
                presented: presented.clone(),
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        ServerCheck::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                expected: None,
                presented: presented.clone(),
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Accepts exactly the certificate whose SHA-256 fingerprint is `expected`
/// (any certificate when `None`), and checks the handshake signatures made
/// with its key, so the server proves it holds the private key.
#[derive(Debug)]
struct FingerprintVerifier {
    expected: Option<String>,
    presented: Arc<Mutex<Option<String>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        *self
            .presented
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(got.clone());
        match &self.expected {
            Some(expected) if *expected != got => Err(rustls::Error::General(format!(
                "certificate fingerprint mismatch: expected sha256={expected}, \
                 the server presented sha256={got}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_64_lowercase_hex() {
        let id = Identity::self_signed().unwrap();
        assert_eq!(id.fingerprint.len(), FINGERPRINT_HEX_LEN);
        assert!(id
            .fingerprint
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        // A known vector: SHA-256 of the empty string.
        assert_eq!(
            fingerprint(&CertificateDer::from(Vec::new())),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn configs_build_with_the_ring_provider() {
        let p = provider();
        let id = Identity::self_signed().unwrap();
        let server = server_crypto(&p, &id).unwrap();
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        let slot = Arc::new(Mutex::new(None));
        for check in [
            ServerCheck::Pinned(id.fingerprint.clone()),
            ServerCheck::Insecure,
        ] {
            let client = client_crypto(&p, &check, &slot).unwrap();
            assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
        }
    }
}
