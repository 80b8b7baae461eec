//! RTCP on a real call: SIPp (Debian `sip-tester`) calls the engine and
//! streams recorded speech while the agent answers; the engine sends RFC
//! 3550 reports to SIPp's RTP port + 1. SIPp ignores RTCP, so the test
//! listens there itself: it checks every compound packet (with tshark,
//! Wireshark's independent dissector, when it is installed; `./dev setup`
//! installs it), answers each sender report with a receiver report after
//! holding it 100 ms, and checks that the engine's end-of-call stats carry
//! the round-trip time that makes, the loss and jitter of SIPp's stream,
//! and that the call ends with an RTCP BYE.
//!
//! Wall-clock time: SIPp is a real process (the report schedule itself is
//! tested on virtual time in `transport::rtcp`).

mod common;

use common::sipp::{describe, fixtures, free_port};

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use callingbox_engine::session::MediaWorker;
use callingbox_engine::transport::rtcp::{
    self, NtpTime, PT_BYE, PT_RR, PT_SDES, PT_SR, RtcpPacket,
};
use callingbox_engine::transport::rtp::parse_rtp;
use callingbox_engine::transport::sip::{
    IncomingCall, SipCallRefused, SipCallSetup, SipConfig, SipEnd, SipEvent, SipServer,
};
use callingbox_engine::transport::spawn_worker;
use callingbox_engine::vad::VadBatch;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const BOOK_TABLE: &str =
    "I'd like to book a table for four people tomorrow at seven in the evening.";
const REPLY: &str = "Sure, I can book that for you. Let me check what we have for four people tomorrow evening, \
    we have a table at seven by the window, and another one at seven thirty near the bar.";
/// How long the test's peer holds an SR before it answers (and claims DLSR 0).
const HOLD: Duration = Duration::from_millis(100);
/// The test peer's SSRC and the jitter it reports about the engine's stream.
const PEER_SSRC: u32 = 0x5EED_0001;
const PEER_JITTER: u32 = 16;

fn installed(program: &str, version_flag: &str) -> bool {
    Command::new(program).arg(version_flag).output().is_ok()
}

/// A receiver report from the test peer about `ssrc`: LSR from `sr_ntp`,
/// DLSR 0, nothing lost, then an SDES with a CNAME.
fn receiver_report(ssrc: u32, sr_ntp: NtpTime) -> Vec<u8> {
    let mut packet = vec![0x81, PT_RR, 0, 7];
    packet.extend_from_slice(&PEER_SSRC.to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(&[0; 8]); // fraction, cumulative lost, highest seq
    packet.extend_from_slice(&PEER_JITTER.to_be_bytes());
    packet.extend_from_slice(&sr_ntp.middle().to_be_bytes());
    packet.extend_from_slice(&0u32.to_be_bytes()); // DLSR: claims no hold
    let cname = b"sipp-peer";
    // Chunk: SSRC, CNAME item, a null, padded to a word: 4 + 2 + 9 + 1 = 16.
    packet.extend_from_slice(&[0x81, PT_SDES, 0, 4]);
    packet.extend_from_slice(&PEER_SSRC.to_be_bytes());
    packet.extend_from_slice(&[1, cname.len() as u8]);
    packet.extend_from_slice(cname);
    packet.push(0);
    packet
}

/// What the test peer saw on SIPp's RTCP port.
#[derive(Default)]
struct PeerLog {
    datagrams: Vec<(SocketAddr, Vec<u8>, SystemTime)>,
    answered: usize,
}

/// Listens on `socket`, logs every datagram, answers SRs after [`HOLD`].
async fn rtcp_peer(socket: UdpSocket, log: Arc<Mutex<PeerLog>>) {
    let mut buffer = [0u8; 1_500];
    while let Ok((length, from)) = socket.recv_from(&mut buffer).await {
        let datagram = buffer[..length].to_vec();
        log.lock()
            .expect("log")
            .datagrams
            .push((from, datagram.clone(), SystemTime::now()));
        if rtcp::validate_compound(&datagram).is_err() {
            continue;
        }
        // A goodbye is not answered: the engine has gone.
        if rtcp::packets(&datagram).any(|packet| matches!(packet, RtcpPacket::Bye { .. })) {
            continue;
        }
        let sr = rtcp::packets(&datagram).find_map(|packet| match packet {
            RtcpPacket::SenderReport { ssrc, info, .. } => Some((ssrc, info.ntp)),
            _ => None,
        });
        if let Some((ssrc, ntp)) = sr {
            tokio::time::sleep(HOLD).await;
            let _ = socket.send_to(&receiver_report(ssrc, ntp), from).await;
            log.lock().expect("log").answered += 1;
        }
    }
}

/// A pcap file (link type RAW: IPv4) of the datagrams, as tshark reads it.
fn pcap(datagrams: &[(SocketAddr, Vec<u8>, SystemTime)], to: SocketAddr) -> Vec<u8> {
    let mut file = Vec::new();
    file.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
    file.extend_from_slice(&2u16.to_le_bytes());
    file.extend_from_slice(&4u16.to_le_bytes());
    file.extend_from_slice(&[0; 8]);
    file.extend_from_slice(&65_535u32.to_le_bytes());
    file.extend_from_slice(&101u32.to_le_bytes()); // LINKTYPE_RAW
    for (from, payload, at) in datagrams {
        let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
            panic!("IPv4 only");
        };
        let total = 20 + 8 + payload.len();
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        ip.extend_from_slice(&from.ip().octets());
        ip.extend_from_slice(&to.ip().octets());
        let sum = ip
            .chunks(2)
            .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
            .sum::<u32>();
        let folded = (sum & 0xFFFF) + (sum >> 16);
        let checksum = !((folded & 0xFFFF) + (folded >> 16)) as u16;
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        ip.extend_from_slice(&from.port().to_be_bytes());
        ip.extend_from_slice(&to.port().to_be_bytes());
        ip.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0]); // no UDP checksum (allowed on IPv4)
        ip.extend_from_slice(payload);
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        file.extend_from_slice(&(since.as_secs() as u32).to_le_bytes());
        file.extend_from_slice(&since.subsec_micros().to_le_bytes());
        file.extend_from_slice(&(ip.len() as u32).to_le_bytes());
        file.extend_from_slice(&(ip.len() as u32).to_le_bytes());
        file.extend_from_slice(&ip);
    }
    file
}

/// Starts an engine answering number 1000 with a scripted agent; returns
/// its SIP address and the call's events.
async fn start_engine(
    rtp_ports: std::ops::RangeInclusive<u16>,
) -> (String, mpsc::UnboundedReceiver<SipEvent>) {
    let (events_tx, events) = mpsc::unbounded_channel();
    let factory = move |_call: &IncomingCall| {
        let conversation =
            scripted_conversation(&[BOOK_TABLE], &[REPLY]).map_err(|error| SipCallRefused {
                status: 503,
                reason: error.to_string(),
            })?;
        Ok(SipCallSetup {
            media: pcmu_media(),
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(events_tx.clone()),
            cancel: conversation.cancel,
            tap: None,
        })
    };
    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(4), None));
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.rtp_ports = rtp_ports;
    config.numbers = vec!["1000".into()];
    let server = SipServer::bind(config, worker.clone(), factory)
        .await
        .expect("bind SIP");
    let target = server.local_addr().to_string();
    tokio::spawn(server.run());

    (target, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_call_carries_rtcp_reports_rtt_and_a_final_bye() {
    if !installed("sipp", "-v") {
        println!(
            "SKIPPED sipp_call_carries_rtcp_reports_rtt_and_a_final_bye: `sipp` is not installed (apt-get install sip-tester)"
        );
        return;
    }
    let (target, mut events) = start_engine(42_700..=42_798).await;

    let (sip_port, media_port) = (free_port(), free_port());
    let sipp = tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            .current_dir(fixtures("audio"))
            .arg(target)
            .arg("-sf")
            .arg(fixtures("sip").join("uac_rtcp.xml"))
            .args(["-s", "1000", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &sip_port.to_string(), "-mp", &media_port.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "40s", "-timeout_error"])
            .output()
            .expect("run sipp")
    });

    // SIPp's offer says where its RTP is; RTCP goes to the port above.
    let offered = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(SipEvent::Ringing(call))) => break call.media.remote_rtp,
            Ok(Some(_)) => continue,
            other => panic!("no ringing: {other:?}"),
        }
    };
    let rtcp_at = SocketAddr::new(offered.ip(), offered.port() + 1);
    let socket = UdpSocket::bind(rtcp_at)
        .await
        .expect("SIPp leaves its RTCP port free");
    let log = Arc::new(Mutex::new(PeerLog::default()));
    let peer = tokio::spawn(rtcp_peer(socket, Arc::clone(&log)));

    let output = sipp.await.expect("sipp thread");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let rtp = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(SipEvent::Ended { reason, rtp })) => {
                assert_eq!(reason, SipEnd::RemoteBye);
                break rtp;
            }
            Ok(Some(_)) => continue,
            other => panic!("the call did not end: {other:?}"),
        }
    };
    // The BYE leaves as the call ends; give it a moment on loopback.
    tokio::time::sleep(Duration::from_millis(200)).await;
    peer.abort();
    let log = log.lock().expect("log");

    // Every datagram is a valid compound starting with SR or RR, with our
    // CNAME; the last one says BYE.
    let datagrams = &log.datagrams;
    assert!(datagrams.len() >= 4, "{} RTCP datagrams", datagrams.len());
    let mut sender_reports = Vec::new();
    let mut blocks_about_sipp = Vec::new();
    for (index, (_, datagram, at)) in datagrams.iter().enumerate() {
        rtcp::validate_compound(datagram).expect("a valid compound packet");
        let packets: Vec<RtcpPacket<'_>> = rtcp::packets(datagram).collect();
        assert!(matches!(
            packets[0],
            RtcpPacket::SenderReport { .. } | RtcpPacket::ReceiverReport { .. }
        ));
        assert_eq!(packets[1], RtcpPacket::SourceDescription);
        let last = index == datagrams.len() - 1;
        assert_eq!(
            matches!(packets.last(), Some(RtcpPacket::Bye { .. })),
            last,
            "BYE only at the end: {packets:?}"
        );
        if let RtcpPacket::SenderReport { info, blocks, .. } = packets[0] {
            // The SR's NTP time is the wall clock (within 1 s of arrival).
            let arrival = NtpTime::from_system(*at);
            assert!(arrival.0.abs_diff(info.ntp.0) < 1 << 32, "{info:?}");
            sender_reports.push(info);
            blocks_about_sipp.extend(blocks.iter());
        }
        if let RtcpPacket::ReceiverReport { blocks, .. } = packets[0] {
            blocks_about_sipp.extend(blocks.iter());
        }
    }
    assert!(
        !sender_reports.is_empty(),
        "the agent spoke: an SR was sent"
    );
    let last_sr = sender_reports.last().expect("an SR");
    // Comfort silence counts: it is RTP the engine sent.
    assert!(u64::from(last_sr.packets) <= rtp.sent + rtp.silence_sent && last_sr.packets > 0);
    assert!(last_sr.octets <= 160 * last_sr.packets && last_sr.octets > 0);
    // SIPp streamed ~225 packets over loopback: none lost in any report.
    assert!(!blocks_about_sipp.is_empty());
    for block in &blocks_about_sipp {
        assert_eq!(
            (block.fraction_lost, block.cumulative_lost),
            (0, 0),
            "{block:?}"
        );
    }
    let highest = blocks_about_sipp.iter().map(|b| b.highest_sequence).max();
    assert!(highest.is_some());

    // The engine's end-of-call stats.
    let stats = rtp.rtcp;
    assert_eq!(stats.reports_sent as usize, datagrams.len(), "{stats:?}");
    assert_eq!(stats.sender_reports_sent as usize, sender_reports.len());
    // Every answer came back but perhaps one to an SR just before the hang-up.
    let received = stats.reports_received as usize;
    assert!(
        received >= 1 && received <= log.answered && received + 1 >= log.answered,
        "{stats:?}, {} answered",
        log.answered
    );
    assert_eq!(stats.bad_packets, 0);
    assert!(
        stats.expected >= rtp.audio_received && rtp.audio_received >= 150,
        "{rtp:?}"
    );
    assert_eq!(stats.lost, 0, "{stats:?}");
    assert!(stats.jitter_max < Duration::from_millis(20), "{stats:?}");
    let rtt = stats.rtt.expect("an RTT from the peer's report");
    assert!(
        rtt >= HOLD - Duration::from_millis(5) && rtt < HOLD + Duration::from_millis(200),
        "RTT {rtt:?} for a {HOLD:?} hold"
    );
    assert_eq!(stats.remote_fraction_lost, Some(0));
    assert_eq!(stats.remote_jitter, Some(Duration::from_millis(2)));
    println!(
        "RTCP: {} reports ({} SR) sent, {} answered; RTT {rtt:?}; jitter max {:?}; expected {} lost {}",
        stats.reports_sent,
        stats.sender_reports_sent,
        stats.reports_received,
        stats.jitter_max,
        stats.expected,
        stats.lost
    );

    // An independent decoder: Wireshark's RTCP dissector.
    if !installed("tshark", "--version") {
        println!("SKIPPED the tshark decode: `tshark` is not installed (apt-get install tshark)");
        return;
    }
    let file = std::env::temp_dir().join(format!("callingbox-rtcp-{}.pcap", rtcp_at.port()));
    std::fs::write(&file, pcap(datagrams, rtcp_at)).expect("write pcap");
    let decoded = Command::new("tshark")
        .arg("-r")
        .arg(&file)
        .args(["-d", &format!("udp.port=={},rtcp", rtcp_at.port())])
        .args(["-T", "fields", "-E", "separator=;", "-E", "occurrence=a"])
        .args(["-e", "rtcp.pt", "-e", "_ws.malformed"])
        .output()
        .expect("run tshark");
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&decoded.stdout);
    let frames: Vec<&str> = text.lines().collect();
    assert_eq!(
        frames.len(),
        datagrams.len(),
        "tshark: {text}\n{}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    for (index, frame) in frames.iter().enumerate() {
        let fields: Vec<&str> = frame.split(';').collect();
        let types: Vec<&str> = fields[0].split(',').collect();
        assert!(
            types[0] == PT_SR.to_string() || types[0] == PT_RR.to_string(),
            "frame {index}: {frame}"
        );
        assert!(
            types.contains(&PT_SDES.to_string().as_str()),
            "frame {index}: {frame}"
        );
        assert_eq!(
            types.contains(&PT_BYE.to_string().as_str()),
            index == frames.len() - 1,
            "frame {index}: {frame}"
        );
        assert!(
            fields.get(1).is_none_or(|f| f.is_empty()),
            "malformed: {frame}"
        );
    }
    println!("tshark decoded {} RTCP frames: {frames:?}", frames.len());
}

/// The test peer's SR at `ntp` after `packets` packets of 160 octets, then an SDES.
fn sender_report(ntp: NtpTime, packets: u32) -> Vec<u8> {
    let mut packet = vec![0x80, PT_SR, 0, 6];
    packet.extend_from_slice(&PEER_SSRC.to_be_bytes());
    packet.extend_from_slice(&ntp.0.to_be_bytes());
    packet.extend_from_slice(&(packets * 160).to_be_bytes());
    packet.extend_from_slice(&packets.to_be_bytes());
    packet.extend_from_slice(&(packets * 160).to_be_bytes());
    packet.extend_from_slice(&[0x81, PT_SDES, 0, 4]);
    packet.extend_from_slice(&PEER_SSRC.to_be_bytes());
    packet.extend_from_slice(&[1, 9]);
    packet.extend_from_slice(b"sipp-peer");
    packet.push(0);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtcp_mux_offered_by_sipp_shares_the_rtp_port() {
    if !installed("sipp", "-v") {
        println!(
            "SKIPPED rtcp_mux_offered_by_sipp_shares_the_rtp_port: `sipp` is not installed (apt-get install sip-tester)"
        );
        return;
    }
    let (target, mut events) = start_engine(42_800..=42_898).await;
    // The media port SIPp offers is the test's, and so is the one above it
    // (where RTCP would go without mux).
    let (media, above) = loop {
        let media = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = media.local_addr().expect("addr").port();
        if port.is_multiple_of(2)
            && let Ok(above) = StdUdpSocket::bind(("127.0.0.1", port + 1))
        {
            break (media, above);
        }
    };
    let rtp_port = media.local_addr().expect("addr").port();
    media.set_nonblocking(true).expect("nonblocking");
    above.set_nonblocking(true).expect("nonblocking");
    let media = UdpSocket::from_std(media).expect("tokio socket");
    let sip_port = free_port();
    let sipp = tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            .arg(target)
            .arg("-sf")
            .arg(fixtures("sip").join("uac_rtcp_mux.xml"))
            .args(["-s", "1000", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &sip_port.to_string()])
            .args(["-key", "rtp_port", &rtp_port.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"])
            .output()
            .expect("run sipp")
    });

    // The engine's first report comes from its RTP socket, to the RTP port
    // (after the comfort silence it sends while its agent is quiet, from
    // the same socket).
    let mut buffer = [0u8; 1_500];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let (length, engine_rtp) = loop {
        let received = tokio::time::timeout_at(deadline, media.recv_from(&mut buffer)).await;
        let Ok(Ok((length, from))) = received else {
            let output = sipp.await.expect("sipp thread");
            panic!(
                "no first report within the initial interval: {}",
                describe(&output)
            );
        };
        if rtcp::is_rtcp(&buffer[..length]) {
            break (length, from);
        }
        assert!(
            parse_rtp(&buffer[..length]).is_ok(),
            "{:?}",
            &buffer[..length]
        );
    };
    let mut reports = vec![(buffer[..length].to_vec(), SystemTime::now())];

    // 3 s of PCMU silence from the same port, with an SR every second.
    let mut our_srs = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let packets = 150u32;
    for index in 0..packets {
        ticks.tick().await;
        let mut rtp = vec![0x80, 0];
        rtp.extend_from_slice(&(index as u16).to_be_bytes());
        rtp.extend_from_slice(&(index * 160).to_be_bytes());
        rtp.extend_from_slice(&PEER_SSRC.to_be_bytes());
        rtp.extend_from_slice(&[0xFF; 160]);
        media.send_to(&rtp, engine_rtp).await.expect("send RTP");
        if index.is_multiple_of(50) {
            let now = SystemTime::now();
            let ntp = NtpTime::from_system(now);
            media
                .send_to(&sender_report(ntp, index + 1), engine_rtp)
                .await
                .expect("send SR");
            our_srs.push((ntp, now));
        }
        while let Ok((length, _)) = media.try_recv_from(&mut buffer) {
            if rtcp::is_rtcp(&buffer[..length]) {
                reports.push((buffer[..length].to_vec(), SystemTime::now()));
            }
        }
    }
    // Reports until the call ends and its BYE came, timed as they arrive.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut ended = None;
    loop {
        let wait = if ended.is_some() {
            Duration::from_millis(300)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        tokio::select! {
            received = tokio::time::timeout(wait, media.recv_from(&mut buffer)) => match received {
                Ok(Ok((length, _))) => {
                    if rtcp::is_rtcp(&buffer[..length]) {
                        reports.push((buffer[..length].to_vec(), SystemTime::now()));
                    }
                }
                _ => break,
            },
            event = events.recv(), if ended.is_none() => match event {
                Some(SipEvent::Ended { reason, rtp }) => {
                    assert_eq!(reason, SipEnd::RemoteBye);
                    ended = Some(rtp);
                }
                Some(_) => {}
                None => panic!("the engine's events stopped"),
            },
        }
    }
    let rtp = ended.expect("the call ended");
    let output = sipp.await.expect("sipp thread");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        above.recv_from(&mut buffer).is_err(),
        "nothing goes to RTP port + 1 under rtcp-mux"
    );

    // Every report is valid; the last says BYE; a block about our stream
    // carries our SR's time as LSR and the time since as DLSR.
    let mut checked_dlsr = 0;
    for (index, (datagram, arrived)) in reports.iter().enumerate() {
        rtcp::validate_compound(datagram).expect("a valid compound packet");
        let packets: Vec<RtcpPacket<'_>> = rtcp::packets(datagram).collect();
        assert_eq!(
            matches!(packets.last(), Some(RtcpPacket::Bye { .. })),
            index == reports.len() - 1,
            "{packets:?}"
        );
        let blocks = match packets[0] {
            RtcpPacket::SenderReport { blocks, .. } | RtcpPacket::ReceiverReport { blocks, .. } => {
                blocks
            }
            other => panic!("starts with {other:?}"),
        };
        for block in blocks.iter().filter(|block| block.ssrc == PEER_SSRC) {
            assert_eq!(block.cumulative_lost, 0, "{block:?}");
            let Some((_, sent)) = our_srs
                .iter()
                .find(|(ntp, _)| ntp.middle() == block.last_sr)
            else {
                assert_eq!(block.last_sr, 0, "LSR is one of our SRs: {block:?}");
                continue;
            };
            let held = arrived.duration_since(*sent).expect("after the SR");
            let dlsr =
                Duration::from_micros(u64::from(block.delay_since_last_sr) * 1_000_000 / 65_536);
            assert!(
                held.abs_diff(dlsr) < Duration::from_millis(50),
                "held {held:?}, DLSR {dlsr:?}"
            );
            checked_dlsr += 1;
        }
    }
    assert!(
        checked_dlsr >= 1,
        "a report answered one of our SRs: {reports:?}"
    );
    assert_eq!(
        rtp.bad_headers, 0,
        "RTCP on the RTP port is not bad RTP: {rtp:?}"
    );
    assert_eq!(rtp.audio_received, u64::from(packets), "{rtp:?}");
    let stats = rtp.rtcp;
    assert_eq!(
        (stats.expected, stats.lost),
        (u64::from(packets), 0),
        "{stats:?}"
    );
    assert_eq!(
        stats.sender_reports_received as usize,
        our_srs.len(),
        "{stats:?}"
    );
    assert_eq!(stats.reports_sent as usize, reports.len(), "{stats:?}");
    assert_eq!(stats.bad_packets, 0);
    println!(
        "rtcp-mux: {} reports on the RTP port, {checked_dlsr} with our LSR; {stats:?}",
        reports.len()
    );
}
