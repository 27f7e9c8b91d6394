//! Development certificates (`sluice certs dev --out DIR`) and the matching client TLS settings.
//!
//! The dev CA, the server certificate and two edge client certificates let a developer (and the
//! test suite) run the mutually authenticated ingest endpoint locally. A third client
//! certificate is signed by a throw-away CA that is never written, so a test can prove that an
//! untrusted client certificate is refused; an expired one and a revoked one (with the CA's
//! revocation list, `ca.crl`) show the other refusals. None of this is for production: keys are
//! unencrypted PEM files next to the certificates.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use chrono::{Datelike, Days, NaiveDate};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Common name of the development CA written by [`write_dev_certs`].
pub const DEV_CA_COMMON_NAME: &str = "sluice dev CA";

/// How long the generated certificates stay valid, in days, counted from yesterday (UTC) so a
/// slightly slow clock on the verifying side still accepts them.
pub const DEV_CERT_VALIDITY_DAYS: u64 = 366;

/// A certificate file and its private key file, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyPaths {
    /// The certificate (PEM, one `CERTIFICATE` block: the leaf only, no chain).
    pub cert: PathBuf,
    /// The unencrypted PKCS#8 private key (PEM), written with mode 0600 on Unix.
    pub key: PathBuf,
}

/// Where [`write_dev_certs`] put each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertPaths {
    /// The dev CA (`ca.crt`, `ca.key`): the server's `client_ca` and the clients' trust root.
    pub ca: CertKeyPaths,
    /// The server certificate (`server.crt`, `server.key`): DNS `localhost` and `sluice.local`,
    /// IP 127.0.0.1 and ::1, serverAuth.
    pub server: CertKeyPaths,
    /// Edge client A (`client-a.crt`, `client-a.key`): DNS `edge-a.sluice.local`,
    /// URI `spiffe://sluice.local/edge/a`, CN `edge-a`, clientAuth.
    pub client_a: CertKeyPaths,
    /// Edge client B (`client-b.crt`, `client-b.key`): DNS `edge-b.sluice.local`,
    /// URI `spiffe://sluice.local/edge/b`, CN `edge-b`, clientAuth.
    pub client_b: CertKeyPaths,
    /// A client certificate signed by a throw-away CA that is not written anywhere
    /// (`client-untrusted.crt`, `client-untrusted.key`): the server must refuse it.
    pub client_untrusted: CertKeyPaths,
    /// Edge client `expired` signed by the dev CA, valid only during 2020
    /// (`client-expired.crt`, `client-expired.key`): the server must refuse it.
    pub client_expired: CertKeyPaths,
    /// Edge client `revoked` signed by the dev CA and listed in [`crl`](Self::crl)
    /// (`client-revoked.crt`, `client-revoked.key`): refused where the CRL is configured.
    pub client_revoked: CertKeyPaths,
    /// The dev CA's certificate revocation list (`ca.crl`, PEM), revoking `client-revoked` only.
    pub crl: PathBuf,
}

/// What a leaf certificate says about its subject.
pub(crate) struct LeafSpec {
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub purpose: ExtendedKeyUsagePurpose,
}

/// A certificate and its key, both PEM.
pub(crate) struct IssuedPem {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate's serial number (what a CRL names).
    pub serial: SerialNumber,
}

/// A CA that can sign leaf certificates.
pub(crate) struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl DevCa {
    /// Generates a new self-signed CA with a fresh P-256 key.
    pub(crate) fn generate(common_name: &str) -> anyhow::Result<DevCa> {
        let key = KeyPair::generate().context("generating CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (not_before, not_after) = dev_validity()?;
        set_validity(&mut params, not_before, not_after)?;
        let cert = params
            .self_signed(&key)
            .context("self-signing CA certificate")?;
        let key_pem = key.serialize_pem();
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// The CA certificate, PEM.
    #[cfg(test)]
    pub(crate) fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a leaf certificate valid from yesterday for [`DEV_CERT_VALIDITY_DAYS`].
    pub(crate) fn issue(&self, spec: &LeafSpec) -> anyhow::Result<IssuedPem> {
        let (not_before, not_after) = dev_validity()?;
        self.issue_with_validity(spec, not_before, not_after)
    }

    /// Issues a leaf certificate valid from midnight UTC of `not_before` to midnight UTC of
    /// `not_after` (tests use this for expired certificates).
    pub(crate) fn issue_with_validity(
        &self,
        spec: &LeafSpec,
        not_before: NaiveDate,
        not_after: NaiveDate,
    ) -> anyhow::Result<IssuedPem> {
        let key = KeyPair::generate().context("generating leaf key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&spec.common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![spec.purpose.clone()];
        params.use_authority_key_identifier_extension = true;
        // Random, positive, 16 bytes: unique without a counter, and known for the CRL.
        let mut serial: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        serial[0] &= 0x7f;
        let serial = SerialNumber::from_slice(&serial);
        params.serial_number = Some(serial.clone());
        let mut sans = Vec::new();
        for dns in &spec.dns_names {
            sans.push(SanType::DnsName(
                dns.as_str()
                    .try_into()
                    .with_context(|| format!("DNS name {dns:?}"))?,
            ));
        }
        for uri in &spec.uris {
            sans.push(SanType::URI(
                uri.as_str()
                    .try_into()
                    .with_context(|| format!("URI {uri:?}"))?,
            ));
        }
        sans.extend(spec.ip_addresses.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        set_validity(&mut params, not_before, not_after)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing certificate for {:?}", spec.common_name))?;
        Ok(IssuedPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A certificate revocation list (PEM) signed by this CA that revokes `revoked`, issued
    /// yesterday and next updated [`DEV_CERT_VALIDITY_DAYS`] later.
    pub(crate) fn revocation_list(&self, revoked: &[&SerialNumber]) -> anyhow::Result<String> {
        let (this_update, next_update) = dev_validity()?;
        let at = |date: NaiveDate| -> anyhow::Result<_> {
            Ok(rcgen::date_time_ymd(
                date.year(),
                u8::try_from(date.month()).context("month out of range")?,
                u8::try_from(date.day()).context("day out of range")?,
            ))
        };
        let params = CertificateRevocationListParams {
            this_update: at(this_update)?,
            next_update: at(next_update)?,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| -> anyhow::Result<_> {
                    Ok(RevokedCertParams {
                        serial_number: (*serial).clone(),
                        revocation_time: at(this_update)?,
                        reason_code: Some(RevocationReason::KeyCompromise),
                        invalidity_date: None,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .context("signing the revocation list")?;
        crl.pem().context("encoding the revocation list")
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Sets the validity window to midnight UTC of each date. (rcgen wants `time::OffsetDateTime`;
/// going through `rcgen::date_time_ymd` spares sluice a direct dependency on `time`.)
fn set_validity(
    params: &mut CertificateParams,
    not_before: NaiveDate,
    not_after: NaiveDate,
) -> anyhow::Result<()> {
    let ymd = |date: NaiveDate| -> anyhow::Result<(i32, u8, u8)> {
        Ok((
            date.year(),
            u8::try_from(date.month()).context("month out of range")?,
            u8::try_from(date.day()).context("day out of range")?,
        ))
    };
    let (year, month, day) = ymd(not_before)?;
    params.not_before = rcgen::date_time_ymd(year, month, day);
    let (year, month, day) = ymd(not_after)?;
    params.not_after = rcgen::date_time_ymd(year, month, day);
    Ok(())
}

/// From yesterday (UTC) for [`DEV_CERT_VALIDITY_DAYS`].
fn dev_validity() -> anyhow::Result<(NaiveDate, NaiveDate)> {
    let today = chrono::DateTime::<chrono::Utc>::from(SystemTime::now()).date_naive();
    let start = today
        .checked_sub_days(Days::new(1))
        .context("date out of range")?;
    let end = start
        .checked_add_days(Days::new(DEV_CERT_VALIDITY_DAYS))
        .context("date out of range")?;
    Ok((start, end))
}

/// Writes the development CA, server and client certificates into `out_dir` (created if
/// missing; existing files are overwritten). Every run makes new keys.
pub fn write_dev_certs(out_dir: &Path) -> anyhow::Result<DevCertPaths> {
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let ca = DevCa::generate(DEV_CA_COMMON_NAME)?;
    let ca_paths = write_pair(out_dir, "ca", &ca.cert_pem, &ca.key_pem)?;

    let server = ca.issue(&LeafSpec {
        common_name: "sluice dev server".to_owned(),
        dns_names: vec!["localhost".to_owned(), "sluice.local".to_owned()],
        uris: Vec::new(),
        ip_addresses: vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
        purpose: ExtendedKeyUsagePurpose::ServerAuth,
    })?;
    let server_paths = write_pair(out_dir, "server", &server.cert_pem, &server.key_pem)?;

    let client_a = ca.issue(&edge_client_spec("a"))?;
    let client_a_paths = write_pair(out_dir, "client-a", &client_a.cert_pem, &client_a.key_pem)?;
    let client_b = ca.issue(&edge_client_spec("b"))?;
    let client_b_paths = write_pair(out_dir, "client-b", &client_b.cert_pem, &client_b.key_pem)?;

    // Edge-shaped names, but an issuer the server has never heard of.
    let stranger_ca = DevCa::generate("sluice untrusted throw-away CA")?;
    let untrusted = stranger_ca.issue(&edge_client_spec("untrusted"))?;
    let untrusted_paths = write_pair(
        out_dir,
        "client-untrusted",
        &untrusted.cert_pem,
        &untrusted.key_pem,
    )?;

    let expired = ca.issue_with_validity(
        &edge_client_spec("expired"),
        NaiveDate::from_ymd_opt(2020, 1, 1).context("date out of range")?,
        NaiveDate::from_ymd_opt(2021, 1, 1).context("date out of range")?,
    )?;
    let expired_paths = write_pair(
        out_dir,
        "client-expired",
        &expired.cert_pem,
        &expired.key_pem,
    )?;
    let revoked = ca.issue(&edge_client_spec("revoked"))?;
    let revoked_paths = write_pair(
        out_dir,
        "client-revoked",
        &revoked.cert_pem,
        &revoked.key_pem,
    )?;
    let crl = out_dir.join("ca.crl");
    fs::write(&crl, ca.revocation_list(&[&revoked.serial])?)
        .with_context(|| format!("writing {}", crl.display()))?;

    Ok(DevCertPaths {
        ca: ca_paths,
        server: server_paths,
        client_a: client_a_paths,
        client_b: client_b_paths,
        client_untrusted: untrusted_paths,
        client_expired: expired_paths,
        client_revoked: revoked_paths,
        crl,
    })
}

/// Edge client `name`: CN `edge-{name}`, DNS `edge-{name}.sluice.local`,
/// URI `spiffe://sluice.local/edge/{name}`, clientAuth.
pub(crate) fn edge_client_spec(name: &str) -> LeafSpec {
    LeafSpec {
        common_name: format!("edge-{name}"),
        dns_names: vec![format!("edge-{name}.sluice.local")],
        uris: vec![format!("spiffe://sluice.local/edge/{name}")],
        ip_addresses: Vec::new(),
        purpose: ExtendedKeyUsagePurpose::ClientAuth,
    }
}

fn write_pair(
    out_dir: &Path,
    stem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<CertKeyPaths> {
    let cert = out_dir.join(format!("{stem}.crt"));
    let key = out_dir.join(format!("{stem}.key"));
    fs::write(&cert, cert_pem).with_context(|| format!("writing {}", cert.display()))?;
    write_private(&key, key_pem.as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    Ok(CertKeyPaths { cert, key })
}

/// Writes a secret file readable by its owner only. An existing file is narrowed to 0600 before
/// the new content goes in, so the key is never readable by others, even for a moment.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        write_all_and_sync(file, contents)
    }
    #[cfg(not(unix))]
    {
        write_all_and_sync(options.open(path)?, contents)
    }
}

fn write_all_and_sync(mut file: fs::File, contents: &[u8]) -> std::io::Result<()> {
    file.write_all(contents)?;
    file.sync_all()
}

/// Reads every certificate of a PEM file; an empty file is an error naming the file.
pub fn read_pem_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no PEM certificates found",
        path.display()
    );
    Ok(certs)
}

/// Client-side TLS settings for talking to sluice (tests, the load tester): trusts only the CA
/// in `ca`, presents `cert_and_key` (certificate chain file, key file) when given, offers ALPN
/// `h2` and `http/1.1`, and uses the ring provider explicitly so no process-wide default is
/// needed.
pub fn client_config(
    ca: &Path,
    cert_and_key: Option<(&Path, &Path)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_pem_certs(ca)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("ring provider does not support the default TLS versions")?
    .with_root_certificates(roots);
    let mut config = match cert_and_key {
        Some((cert_path, key_path)) => {
            let chain = read_pem_certs(cert_path)?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .with_context(|| format!("reading private key from {}", key_path.display()))?;
            builder.with_client_auth_cert(chain, key).with_context(|| {
                format!(
                    "client certificate {} with key {}",
                    cert_path.display(),
                    key_path.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn parse(path: &Path) -> (Vec<String>, Vec<String>, Vec<String>, Option<String>, bool) {
        let der = read_pem_certs(path).unwrap().remove(0);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let mut dns = Vec::new();
        let mut uris = Vec::new();
        let mut ips = Vec::new();
        if let Some(san) = cert.subject_alternative_name().unwrap() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    GeneralName::IPAddress(b) => ips.push(format!("{b:?}")),
                    _ => {}
                }
            }
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .map(|cn| cn.as_str().unwrap().to_owned());
        let not_after = cert.validity().not_after.timestamp();
        let now = chrono::DateTime::<chrono::Utc>::from(SystemTime::now()).timestamp();
        let about_a_year = (360 * 86_400..=367 * 86_400).contains(&(not_after - now));
        (dns, uris, ips, cn, about_a_year)
    }

    #[test]
    fn dev_certs_have_the_promised_names_and_validity() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_dev_certs(dir.path()).unwrap();

        let (_, _, _, ca_cn, ca_year) = parse(&paths.ca.cert);
        assert_eq!(ca_cn.as_deref(), Some(DEV_CA_COMMON_NAME));
        assert!(ca_year);

        let (dns, uris, ips, _, year) = parse(&paths.server.cert);
        assert_eq!(dns, ["localhost", "sluice.local"]);
        assert!(uris.is_empty());
        assert_eq!(ips.len(), 2, "127.0.0.1 and ::1: {ips:?}");
        assert!(year);

        let (dns, uris, _, cn, year) = parse(&paths.client_a.cert);
        assert_eq!(dns, ["edge-a.sluice.local"]);
        assert_eq!(uris, ["spiffe://sluice.local/edge/a"]);
        assert_eq!(cn.as_deref(), Some("edge-a"));
        assert!(year);

        let (dns, uris, _, cn, _) = parse(&paths.client_b.cert);
        assert_eq!(dns, ["edge-b.sluice.local"]);
        assert_eq!(uris, ["spiffe://sluice.local/edge/b"]);
        assert_eq!(cn.as_deref(), Some("edge-b"));

        // Only the trusted CA is on disk: the throw-away CA of the untrusted client is not.
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "ca.crl",
                "ca.crt",
                "ca.key",
                "client-a.crt",
                "client-a.key",
                "client-b.crt",
                "client-b.key",
                "client-expired.crt",
                "client-expired.key",
                "client-revoked.crt",
                "client-revoked.key",
                "client-untrusted.crt",
                "client-untrusted.key",
                "server.crt",
                "server.key"
            ]
        );
    }

    #[test]
    fn dev_certs_chain_to_the_dev_ca_except_the_untrusted_one() {
        use rustls_pki_types::UnixTime;

        let dir = tempfile::tempdir().unwrap();
        let paths = write_dev_certs(dir.path()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(read_pem_certs(&paths.ca.cert).unwrap());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let verify = |path: &Path| {
            let leaf = read_pem_certs(path).unwrap().remove(0);
            verifier.verify_client_cert(&leaf, &[], UnixTime::now())
        };
        verify(&paths.client_a.cert).unwrap();
        verify(&paths.client_b.cert).unwrap();
        let refused = verify(&paths.client_untrusted.cert).unwrap_err();
        assert_eq!(
            refused,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        );
        // A server certificate is not a client certificate (EKU serverAuth only).
        assert!(verify(&paths.server.cert).is_err());
        assert!(matches!(
            verify(&paths.client_expired.cert).unwrap_err(),
            rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })
        ));
        // Without the CRL the revoked client passes; with it, it alone is refused.
        verify(&paths.client_revoked.cert).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(read_pem_certs(&paths.ca.cert).unwrap());
        let crls = rustls_pki_types::CertificateRevocationListDer::pem_file_iter(&paths.crl)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(crls.len(), 1);
        let with_crl = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .with_crls(crls)
        .build()
        .unwrap();
        let verify = |path: &Path| {
            let leaf = read_pem_certs(path).unwrap().remove(0);
            with_crl.verify_client_cert(&leaf, &[], UnixTime::now())
        };
        verify(&paths.client_a.cert).unwrap();
        assert_eq!(
            verify(&paths.client_revoked.cert).unwrap_err(),
            rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)
        );
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private_and_rewriting_overwrites() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        // A pre-existing, world-readable key file must end up 0600 too.
        fs::write(dir.path().join("client-a.key"), "old").unwrap();
        fs::set_permissions(
            dir.path().join("client-a.key"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let first = write_dev_certs(dir.path()).unwrap();
        let first_ca = fs::read_to_string(&first.ca.cert).unwrap();
        for pair in [
            &first.ca,
            &first.server,
            &first.client_a,
            &first.client_b,
            &first.client_untrusted,
            &first.client_expired,
            &first.client_revoked,
        ] {
            let mode = fs::metadata(&pair.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", pair.key.display());
        }
        let second = write_dev_certs(dir.path()).unwrap();
        assert_eq!(first, second);
        assert_ne!(first_ca, fs::read_to_string(&second.ca.cert).unwrap());
    }

    #[test]
    fn client_config_offers_h2_and_http11_and_names_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_dev_certs(dir.path()).unwrap();
        let config = client_config(
            &paths.ca.cert,
            Some((&paths.client_a.cert, &paths.client_a.key)),
        )
        .unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(config.client_auth_cert_resolver.has_certs());

        let missing = dir.path().join("nope.crt");
        let err = client_config(&missing, None).unwrap_err();
        assert!(format!("{err:#}").contains("nope.crt"), "{err:#}");
        let err =
            client_config(&paths.ca.cert, Some((&paths.client_a.cert, &missing))).unwrap_err();
        assert!(format!("{err:#}").contains("nope.crt"), "{err:#}");
    }
}
