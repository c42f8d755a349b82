//! A client of a broker with access control and TLS on
//! (`docs/security.md`): every request is signed with the account's
//! secret, and connections use TLS trusting the given CA.
//!
//! `cargo run --example secure_client NAMESRV TOPIC ACCESS_KEY SECRET_KEY [CA_PEM]`
//! (without `CA_PEM` the connection is plain TCP).

use std::path::Path;
use std::sync::Arc;

use ferromq::client::{ClientConfig, Credentials, Producer};
use ferromq::message::Message;
use ferromq::tls::ClientTls;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [namesrv, topic, key, secret, rest @ ..] = args.as_slice() else {
        eprintln!("usage: secure_client NAMESRV TOPIC ACCESS_KEY SECRET_KEY [CA_PEM]");
        std::process::exit(2);
    };
    let mut cfg = ClientConfig::new([namesrv.clone()]).with_credentials(Credentials::new(key.clone(), secret.clone()));
    if let Some(ca) = rest.first() {
        // Trust this CA; pass a certificate and key too for mutual TLS.
        cfg.security.tls = Some(Arc::new(ClientTls::from_files(Some(Path::new(ca)), None, None)?));
    }
    let producer = Producer::new(cfg);
    match producer.send(Message::new(topic.as_str(), "signed hello")).await {
        Ok(r) => println!("sent {} to {}/{}", r.msg_id, r.broker_name, r.queue_id),
        // A refusal names what is missing: "access denied: account … lacks PUB on topic …".
        Err(e) => eprintln!("refused: {e}"),
    }
    Ok(())
}
