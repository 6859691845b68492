//! The gateway's signalling against the independent device simulator (`gbrelay::sim`), an NVR with
//! 64 channels whose catalog arrives in several GB2312 MESSAGEs, over UDP and over TCP; then an
//! INVITE/200/ACK/BYE exchange with it.

mod signal_ua;
use signal_ua::*;

use gbrelay::config::Transport;
use gbrelay::signal::InviteRequest;
use gbrelay::sim::{SimConfig, Simulator, SipTransport};
use gbrelay::store::Store;
use std::time::Duration;

async fn nvr_with_64_channels(sip_transport: SipTransport) {
    let store = Store::open_in_memory().unwrap();
    let (h, _j) = start(test_config(), store.clone()).await;
    let sim = Simulator::start(SimConfig {
        server: h.local_sip_addr(),
        local: "127.0.0.1:0".parse().unwrap(),
        sip_transport,
        channels: 64,
        catalog_page: 10,
        channel_names_chinese: true,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    assert!(eventually(Duration::from_secs(5), || h.device_online(NVR)).await, "simulated NVR registers");
    assert!(eventually(Duration::from_secs(5), || store.channel_count(NVR).unwrap() == 64).await);
    let (_, chans) = store.list_channels(NVR, 0, 1000).unwrap();
    for id in sim.channel_ids() {
        let c = chans.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("channel {id} missing"));
        assert!(!c.name.is_ascii(), "Chinese name intact: {:?}", c.name);
        assert!(!c.name.contains('\u{FFFD}'), "no replacement characters: {:?}", c.name);
    }
    let ch = sim.channel_ids()[0].clone();
    let ssrc = h.allocate_ssrc().unwrap();
    let session = h
        .invite(InviteRequest {
            device_id: NVR.into(),
            channel_id: ch,
            transport: Transport::Udp,
            media_ip: "127.0.0.1".parse().unwrap(),
            media_port: 9,
            ssrc,
            substream: None,
            deadline: Duration::from_secs(5),
        })
        .await
        .expect("the simulator accepts the INVITE");
    assert!(session.answer.port().is_some());
    assert_eq!(store.list_sessions().unwrap().len(), 1);
    tokio::time::timeout(Duration::from_secs(5), session.bye()).await.unwrap();
    assert!(eventually(Duration::from_secs(3), || sim.stats().byes >= 1).await, "the device saw our BYE");
    assert!(store.list_sessions().unwrap().is_empty());
    h.release_ssrc(ssrc);
    sim.stop().await;
}

#[tokio::test]
async fn simulated_nvr_over_udp_registers_with_64_channels_and_takes_an_invite() {
    nvr_with_64_channels(SipTransport::Udp).await;
}

#[tokio::test]
async fn simulated_nvr_over_tcp_registers_with_64_channels_and_takes_an_invite() {
    nvr_with_64_channels(SipTransport::Tcp).await;
}
