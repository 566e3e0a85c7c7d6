//! Objects and material tests and benchmarks build against the stand-in.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{TimeDelta, Utc};
use rekey::{
    issue::{CertAuthority, CertificateSpec, KeyType, Usage},
    rotate::TokenSpec,
    sink::{Material, SinkSpec},
};
use secrecy::SecretString;
use serde_json::{Value, json};

use super::KubeStandIn;

/// A CA and a fresh leaf certificate from it, as sink material; returns
/// the material and the leaf's expiry.
pub fn tls_material(ca: &CertAuthority, dns: &str) -> (Material, chrono::DateTime<Utc>) {
    let spec = CertificateSpec {
        name: format!("cert/{dns}"),
        issuer: None,
        common_name: None,
        organizations: vec![],
        dns_names: vec![dns.into()],
        ip_addresses: vec![],
        key: KeyType::EcdsaP256,
        usages: vec![Usage::Server],
        lifetime: Duration::from_secs(3600).into(),
        renew_fraction: None,
        renew_before: None,
        schedule: None,
        sink: SinkSpec::File {
            dir: "/nonexistent".into(),
        },
        adopt: false,
        reload: vec![],
        probe: None,
        probe_grace: None,
    };
    let leaf = ca
        .issue(&spec, Utc::now())
        .expect("issuing a test certificate");
    (
        Material::Certificate {
            chain_pem: leaf.cert_pem.clone(),
            key_pem: leaf.key_pem,
            ca_pem: leaf.ca_pem,
        },
        leaf.not_after,
    )
}

/// A throwaway CA.
pub fn test_ca() -> CertAuthority {
    CertAuthority::generate(
        "stand-in test CA",
        KeyType::EcdsaP256,
        TimeDelta::days(1),
        Utc::now(),
    )
    .expect("CA")
    .0
}

/// A `[[token]]` spec publishing to a Secret in its own namespace.
pub fn token_spec(
    ns: &str,
    sa: &str,
    audiences: &[&str],
    lifetime: Duration,
    bound: bool,
) -> TokenSpec {
    TokenSpec {
        name: format!("sa-token/{ns}/{sa}"),
        namespace: ns.into(),
        service_account: sa.into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        lifetime: lifetime.into(),
        renew_fraction: None,
        renew_before: None,
        schedule: None,
        bound,
        grace: None,
        sink: SinkSpec::KubernetesSecret {
            namespace: ns.into(),
            name: format!("{sa}-token"),
        },
        adopt: false,
        reload: vec![],
    }
}

/// A minimal Deployment/StatefulSet/DaemonSet object.
pub fn workload(kind: &str, ns: &str, name: &str) -> Value {
    let mut spec = json!({
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
    });
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A ServiceAccount object.
pub fn service_account(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}})
}

/// A kubelet's client CSR (PEM) for `node`, as a joining kubelet makes it.
pub fn node_csr_pem(node: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    p.serialize_request(&key).expect("csr").pem().expect("pem")
}

/// The CertificateSigningRequest body a kubelet posts.
pub fn node_csr(name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": STANDARD.encode(node_csr_pem(node)),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["digital signature", "client auth"],
        },
    })
}

/// A Node object.
pub fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})
}

/// A bootstrap-token Secret as kubeadm writes it (for tests that need one
/// without going through `rekey token create`). Returns the object and the token.
pub fn bootstrap_secret(
    id: &str,
    ttl: Option<TimeDelta>,
    policy: Option<&str>,
) -> (Value, SecretString) {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::rng();
    let secret: String = (0..16)
        .map(|_| CHARS[r.random_range(0..CHARS.len())] as char)
        .collect();
    let mut data = json!({
        "token-id": id,
        "token-secret": secret,
        "usage-bootstrap-authentication": "true",
        "usage-bootstrap-signing": "true",
        "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
    });
    if let Some(t) = ttl {
        data["expiration"] =
            json!((Utc::now() + t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    let labels = policy
        .map(|p| json!({"rekey.io/bootstrap-policy": p}))
        .unwrap_or(json!({}));
    (
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system", "labels": labels},
            "type": "bootstrap.kubernetes.io/token",
            "stringData": data,
        }),
        SecretString::from(format!("{id}.{secret}")),
    )
}

impl KubeStandIn {
    /// A node joining with a bootstrap token, as kubelet and the
    /// controller-manager do it: the CSR is created *with the token* (so the
    /// stand-in sets `spec.username` = `system:bootstrap:<id>`), approved,
    /// issued, then the Node registers. Returns the CSR name.
    pub async fn join_node(&self, token: &str, node_name: &str) -> String {
        let kc = self.write_kubeconfig(&format!("bootstrap-{node_name}"), token, None);
        let client = rekey::k8s::client(Some(&kc), None)
            .await
            .expect("bootstrap client");
        let api: kube::Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> =
            kube::Api::all(client);
        let csr_name = format!("csr-{node_name}");
        let body = serde_json::from_value(node_csr(&csr_name, node_name)).expect("csr");
        api.create(&kube::api::PostParams::default(), &body)
            .await
            .expect("creating the CSR with the bootstrap token");
        self.approve_and_issue(&csr_name)
            .expect("approve and issue");
        self.put(node(node_name)).expect("node");
        csr_name
    }
}
