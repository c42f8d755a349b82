//! Bad input on the wire gets clear errors and harms nobody else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use ferromq::wire::{Frame, FrameKind, Status};

fn vm_peak_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

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
    raw_frame(ferromq::wire::PROTOCOL_VERSION, 0, code, corr, header, body, None)
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

    let r = exchange(
        &mut s,
        &raw_frame(ferromq::wire::PROTOCOL_VERSION, 0, 1, 43, b"", b"", Some(100)),
    );
    assert_eq!((r.status(), r.correlation_id), (Status::MalformedFrame, 43));
    assert_ping(&mut s, 44);

    let r = exchange(&mut s, &raw_frame(9, 0, 1, 45, b"", b"", None));
    assert_eq!((r.status(), r.correlation_id), (Status::UnsupportedVersion, 45));
    assert_ping(&mut s, 46);
    // A version-1 client (whose commits carried no broker name) is refused
    // by name, never misread.
    let r = exchange(&mut s, &raw_frame(1, 0, 1, 45, b"", b"", None));
    assert_eq!((r.status(), r.correlation_id), (Status::UnsupportedVersion, 45));
    assert!(
        r.error_message().contains("protocol version 1 is not supported"),
        "{}",
        r.error_message()
    );
    assert_ping(&mut s, 46);

    let r = exchange(&mut s, &request(20, 47, b"{not json", b""));
    assert_eq!((r.status(), r.correlation_id), (Status::MalformedFrame, 47));
    let r = exchange(&mut s, &request(20, 48, br#"{"topic":"t","queues":2,"colour":1}"#, b""));
    assert_eq!(r.status(), Status::MalformedFrame, "unknown JSON fields are refused");

    let r = exchange(&mut s, &request(10, 49, b"", &[0, 5, b'a']));
    assert_eq!((r.status(), r.correlation_id), (Status::MalformedFrame, 49));
    assert!(r.error_message().contains("truncated"), "{}", r.error_message());

    let r = exchange(
        &mut s,
        &raw_frame(ferromq::wire::PROTOCOL_VERSION, 77, 1, 52, b"", b"", None),
    );
    assert_eq!(
        (r.status(), r.correlation_id),
        (Status::MalformedFrame, 52),
        "unknown frame kind"
    );
    let mut send = Vec::new();
    send.extend_from_slice(&1u16.to_be_bytes());
    send.extend_from_slice(b"t");
    send.extend_from_slice(&0u32.to_be_bytes()); // queue
    send.extend_from_slice(&1u32.to_be_bytes()); // one message
    send.extend_from_slice(&0u32.to_be_bytes()); // flags
    send.extend_from_slice(&1u64.to_be_bytes()); // born timestamp
    send.extend_from_slice(&0u16.to_be_bytes()); // no properties
    send.extend_from_slice(&1u32.to_be_bytes());
    send.push(b'x'); // body
    send.extend_from_slice(b"junk"); // trailing bytes
    let r = exchange(&mut s, &request(10, 53, b"", &send));
    assert_eq!(
        (r.status(), r.correlation_id),
        (Status::MalformedFrame, 53),
        "trailing bytes"
    );
    assert!(r.error_message().contains("trailing"), "{}", r.error_message());

    // Well-delimited frames with random contents: each is answered (or, if
    // oneway, dropped) and the connection lives on.
    let mut x = 0x9E37_79B9u32;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for i in 0..200u32 {
        let header: Vec<u8> = (0..rnd() % 40).map(|_| rnd() as u8).collect();
        let body: Vec<u8> = (0..rnd() % 200).map(|_| rnd() as u8).collect();
        let code = [1u16, 10, 11, 12, 13, 14, 20, 21, 22, 30, 34, 37, 999][(rnd() % 13) as usize];
        let kind = [0u8, 2][(rnd() % 2) as usize];
        s.write_all(&raw_frame(
            ferromq::wire::PROTOCOL_VERSION,
            kind,
            code,
            1000 + i,
            &header,
            &body,
            None,
        ))
        .unwrap();
    }
    // Answers come in completion order: read until the ping's.
    s.write_all(&request(1, 54, b"", b"")).unwrap();
    let mut answered = 0;
    loop {
        let r = read_frame(&mut s).expect("the connection survives random frames");
        if r.correlation_id == 54 {
            assert_eq!(r.status(), Status::Success);
            break;
        }
        assert!(
            r.correlation_id >= 1000 && r.correlation_id < 1200,
            "stray answer {}",
            r.correlation_id
        );
        answered += 1;
    }
    assert!(answered > 0, "random requests get answers");
    // Late answers to random frames may still follow: continue on a fresh connection.
    let mut s = connect(&addr);

    let r = exchange(
        &mut s,
        &raw_frame(ferromq::wire::PROTOCOL_VERSION, 1, 0, 50, b"", b"", None),
    );
    assert_eq!(r.status(), Status::MalformedFrame, "clients may not send responses");
    assert_ping(&mut s, 51);

    // An oversized length is refused without reading it (or allocating
    // for it), and closes only this connection.
    let peak_before = vm_peak_kb(broker.pid());
    let mut big = connect(&addr);
    big.write_all(&0xFFFF_FFF0u32.to_be_bytes()).unwrap();
    let r = read_frame(&mut big).expect("an error before the close");
    assert_eq!((r.status(), r.correlation_id), (Status::FrameTooLarge, 0));
    assert!(read_frame(&mut big).is_none(), "then the connection is closed");
    let grown_mb = vm_peak_kb(broker.pid()).saturating_sub(peak_before) / 1024;
    assert!(
        grown_mb < 1024,
        "no allocation for the announced 4 GiB (peak grew {grown_mb} MiB)"
    );

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
