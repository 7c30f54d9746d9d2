//! TEMPORARY STUB (not committed): the certificate store is being written on branch `certs`.
use std::sync::Arc;
#[derive(Debug)]
pub struct CertStore;
#[derive(Debug)]
pub struct HeldCert;
impl CertStore {
    pub fn lookup(&self, _sni: &str) -> Option<Arc<HeldCert>> {
        None
    }
}
impl HeldCert {
    pub fn covers(&self, _host: &str) -> bool {
        false
    }
}
impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}
