use std::sync::Arc;

use bytes::Bytes;

use crate::wire::control::{BrokerRoute, TopicRoute};
use crate::wire::Frame;

/// What a fake server answers to a request frame.
pub(crate) type Handler = Arc<dyn Fn(&Frame) -> Frame + Send + Sync>;

/// Answers every request frame on `listener` with `handler`'s answer.
pub(crate) async fn serve(listener: tokio::net::TcpListener, handler: Handler) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((mut sock, _)) = listener.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut buf = bytes::BytesMut::new();
            loop {
                while let Ok(Some(f)) = Frame::parse(&mut buf, 1 << 20) {
                    let mut out = bytes::BytesMut::new();
                    handler(&f).encode(&mut out);
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
                match sock.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
    }
}

/// Starts a fake server on a free port; returns its address.
pub(crate) async fn start(handler: Handler) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(listener, handler));
    addr
}

/// A local address nothing listens on (connections are refused).
pub(crate) fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A broker group's route entry.
pub(crate) fn broker(name: &str, queues: u32, addrs: &[(u64, &str)], down: &[(u64, &str)]) -> BrokerRoute {
    BrokerRoute {
        broker_name: name.into(),
        cluster: "c".into(),
        queues,
        addrs: addrs.iter().map(|(i, a)| (*i, a.to_string())).collect(),
        down: down.iter().map(|(i, a)| (*i, a.to_string())).collect(),
    }
}

/// A fake name server answering `GET_ROUTE` with whatever `route`
/// holds at the time (changeable by the test) and `GET_CLUSTER_INFO`
/// with no broker; an empty success to anything else.
pub(crate) async fn namesrv(route: Arc<std::sync::Mutex<TopicRoute>>) -> String {
    start(Arc::new(move |f: &Frame| {
        let body = if f.code == crate::wire::Command::GetRoute.code() {
            crate::wire::control::to_json(&*route.lock().unwrap())
        } else if f.code == crate::wire::Command::GetClusterInfo.code() {
            Bytes::from_static(br#"{"brokers":[]}"#)
        } else {
            Bytes::new()
        };
        Frame::ok(f.correlation_id, Bytes::new(), body)
    }))
    .await
}
