//! Bad input on the wire gets clear errors and harms nobody else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use ferromq::wire::{Frame, FrameKind, Status};

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn raw_frame(
    version: u8,
    kind: u8,
    code: u16,
    corr: u32,
    header: &[u8],
    body: &[u8],
    header_len: Option<u32>,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((12 + header.len() + body.len()) as u32).to_be_bytes());
    out.push(version);
    out.push(kind);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&corr.to_be_bytes());
    out.extend_from_slice(&header_len.unwrap_or(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(body);
    out
}

fn request(code: u16, corr: u32, header: &[u8], body: &[u8]) -> Vec<u8> {
    raw_frame(1, 0, code, corr, header, body, None)
}

/// Reads one frame; None when the server closed the connection.
fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = u32::from_be_bytes(len) as usize;
    let mut rest = vec![0u8; n];
    s.read_exact(&mut rest).ok()?;
    let mut buf = bytes::BytesMut::from(&len[..]);
    buf.extend_from_slice(&rest);
    Frame::parse(&mut buf, 64 << 20).ok().flatten()
}

fn exchange(s: &mut TcpStream, bytes: &[u8]) -> Frame {
    s.write_all(bytes).unwrap();
    read_frame(s).expect("a response")
}

fn assert_ping(s: &mut TcpStream, corr: u32) {
    let r = exchange(s, &request(1, corr, b"", b""));
    assert_eq!(
        (r.kind, r.status(), r.correlation_id),
        (FrameKind::Response, Status::Success, corr)
    );
}

#[test]
fn malformed_frames_get_errors_and_harm_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let addr = broker.broker_addr.clone();
    let ns = broker.namesrv_addr.clone();
    let mut good = connect(&addr);
    assert_ping(&mut good, 1);

    let mut s = connect(&addr);
    let r = exchange(&mut s, &request(999, 42, b"", b""));
    assert_eq!((r.status(), r.correlation_id), (Status::UnknownCommand, 42));
    assert!(r.error_message().contains("999"));

    let r = exchange(&mut s, &raw_frame(1, 0, 1, 43, b"", b"", Some(100)));
    assert_eq!((r.status(), r.correlation_id), (Status::MalformedFrame, 43));
    assert_ping(&mut s, 44);

    let r = exchange(&mut s, &raw_frame(9, 0, 1, 45, b"", b"", None));
    assert_eq!((r.status(), r.correlation_id), (Status::UnsupportedVersion, 45));
    assert_ping(&mut s, 46);

    let r = exchange(&mut s, &request(20, 47, b"{not json", b""));
    assert_eq!((r.status(), r.correlation_id), (Status::MalformedFrame, 47));
    let r = exchange(&mut s, &request(20, 48, br#"{"topic":"t","queues":2,"colour":1}"#, b""));
    assert_eq!(r.status(), Status::MalformedFrame, "unknown JSON fields are refused");

    let r = exchange(&mut s, &request(10, 49, b"", &[0, 5, b'a']));
    assert_eq!((r.status(), r.correlation_id), (Status::MalformedFrame, 49));
    assert!(r.error_message().contains("truncated"), "{}", r.error_message());

    let r = exchange(&mut s, &raw_frame(1, 1, 0, 50, b"", b"", None));
    assert_eq!(r.status(), Status::MalformedFrame, "clients may not send responses");
    assert_ping(&mut s, 51);

    // An oversized length is refused without reading it, and closes only
    // this connection.
    let mut big = connect(&addr);
    big.write_all(&0xFFFF_FFF0u32.to_be_bytes()).unwrap();
    let r = read_frame(&mut big).expect("an error before the close");
    assert_eq!((r.status(), r.correlation_id), (Status::FrameTooLarge, 0));
    assert!(read_frame(&mut big).is_none(), "then the connection is closed");

    // Lost framing (length shorter than a header) closes that connection too.
    let mut short = connect(&addr);
    short.write_all(&[0, 0, 0, 3, 1, 2, 3]).unwrap();
    assert_eq!(read_frame(&mut short).unwrap().status(), Status::MalformedFrame);
    assert!(read_frame(&mut short).is_none());

    // Random garbage on two connections.
    for seed in [7u32, 99] {
        let mut g = connect(&addr);
        let mut x = seed;
        let junk: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = g.write_all(&junk);
        let mut sink = Vec::new();
        let _ = g.read_to_end(&mut sink);
    }

    assert_ping(&mut good, 2);
    let acks = produce(&ns, "after", &[], &["still works".to_string()]);
    assert_eq!(acks.len(), 1);
    let got = consume_json(&ns, "after", &["--count", "1", "--idle-timeout", "5"]);
    assert_eq!(got[0]["body"], "still works");
    assert!(broker.is_running(), "the broker survived");
    assert!(!broker.stderr().contains("panicked"), "{}", broker.stderr());
}
