//! The etcd harness itself: plain and TLS with client-certificate auth.

use rekey_integration::etcd::Etcd;

#[tokio::test]
async fn plain_and_tls_etcd_answer() {
    for etcd in [Etcd::start(), Etcd::start_tls()] {
        let mut client = rekey::etcd::client::connect(&etcd.config())
            .await
            .expect("connect");
        client
            .put("/registry/secrets/default/a", "v", None)
            .await
            .expect("put");
        let got = client
            .get("/registry/secrets/default/a", None)
            .await
            .expect("get");
        assert_eq!(got.kvs()[0].value(), b"v");
    }
}

#[tokio::test]
async fn tls_etcd_refuses_a_client_without_certificate() {
    let etcd = Etcd::start_tls();
    let mut config = etcd.config();
    config.client_cert = None;
    config.client_key = None;
    let result = async {
        let mut c = rekey::etcd::client::connect(&config).await?;
        c.get("/x", None)
            .await
            .map_err(|source| rekey::etcd::client::ConnectError::Connect {
                endpoints: String::new(),
                source,
            })
    }
    .await;
    assert!(
        result.is_err(),
        "etcd accepted a client without a certificate"
    );
}
