//! Authenticated REGISTER handling on one core: parse the datagram (rsip + our normalisation),
//! parse the Authorization header, validate the nonce, verify the MD5 digest, build the 200 OK.
//! Target (issue 3): at least 10,000 per second per core.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gbrelay::proto::sip::digest::{
    client_authorization, parse_authorization, verify, NonceCheck, NonceIssuer,
};
use gbrelay::proto::sip::message::{build_response, Message};

fn register_bytes(nonce: &str) -> Bytes {
    let id = "34020000001180000001";
    let uri = "sip:34020000002000000001@3402000000";
    let auth = client_authorization(
        id,
        "3402000000",
        "12345678",
        "REGISTER",
        uri,
        nonce,
        Some(("00000001", "0a4f113b")),
    );
    Bytes::from(format!(
        "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1371463273\r\nFrom: <sip:{id}@3402000000>;tag=2043466181\r\nTo: <sip:{id}@3402000000>\r\nCall-ID: 1011047669\r\nCSeq: 2 REGISTER\r\nContact: <sip:{id}@192.168.1.64:5060>\r\nAuthorization: {auth}\r\nMax-Forwards: 70\r\nUser-Agent: IP Camera\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn handle(data: Bytes, nonces: &NonceIssuer) -> Bytes {
    let m = Message::parse(data).expect("valid REGISTER");
    let creds =
        parse_authorization(m.header("Authorization").expect("has Authorization")).expect("valid digest");
    assert_eq!(nonces.check(&creds.nonce, 1_000, 300_000), NonceCheck::Valid);
    assert!(verify(&creds, "REGISTER", "12345678"));
    let date = "2026-12-03T16:14:15.123".to_owned();
    build_response(
        &m,
        200,
        Some("a1b2c3d4"),
        Some(("192.168.1.64", 5060)),
        &[("Date", date), ("Expires", "3600".into())],
        None,
    )
}

fn bench(c: &mut Criterion) {
    let mut nonces = NonceIssuer::new([9; 16]);
    let nonce = nonces.issue(500);
    let data = register_bytes(&nonce);
    let mut g = c.benchmark_group("register");
    g.throughput(Throughput::Elements(1));
    g.bench_function("authenticated_register", |b| b.iter(|| handle(data.clone(), &nonces)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
