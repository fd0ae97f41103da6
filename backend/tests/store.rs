//! One storage suite, run against SQLite and PostgreSQL (`P2P_TEST_POSTGRES_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use p2p_proto::api::{ConnectionPathKind, FilePeer, PeerConnection};
use p2p_proto::{Bitfield, PeerId};
use p2p_tracker::store::{
    AnnounceOutcome, AnnounceRules, ApiKeyRecord, Backend, Beat, FileQuery, InstanceRecord,
    NewPeer, PeerQuery, Presence, Store, UserRecord,
};

/// Generous bounds, as one principal.
const RULES: AnnounceRules<'static> = AnnounceRules {
    principal: "api-key:test",
    max_variants_per_file: 4,
    max_variants_per_principal: 1000,
    cutoff_ms: 0,
};

/// The outcome of an announce that stored the file (and its variant 1).
const CREATED: AnnounceOutcome = AnnounceOutcome::Stored {
    variant: 1,
    file_created: true,
    variant_created: true,
};

/// The outcome of an announce of a stored manifest, `variant` of its file.
fn existing(variant: u32) -> AnnounceOutcome {
    AnnounceOutcome::Stored {
        variant,
        file_created: false,
        variant_created: false,
    }
}

/// The outcome of an announce that stored a new variant of a known file.
fn new_variant(variant: u32) -> AnnounceOutcome {
    AnnounceOutcome::Stored {
        variant,
        file_created: false,
        variant_created: true,
    }
}

fn new_peer(id: PeerId) -> NewPeer {
    NewPeer {
        id,
        addresses: vec!["192.0.2.1".into(), "host.example".into()],
        port: 6881,
        udp_port: Some(6882),
        relay_only: false,
        relay: None,
        observed_ip: "198.51.100.7".into(),
        name: Some("laptop".into()),
        version: None,
    }
}

async fn peers_and_presence(s: Arc<dyn Store>) {
    let id = peer_id();
    assert_eq!(s.peer_presence(&id).await.unwrap(), None);
    assert_eq!(s.register_peer(&new_peer(id), 1000).await.unwrap(), None);
    let before = s.register_peer(&new_peer(id), 2000).await.unwrap().unwrap();
    assert!(before.online && before.last_seen_ms == 1000);

    s.record_beats(&[Beat {
        peer_id: id,
        at_ms: 5000,
        uploaded: Some(10),
        downloaded: None,
        connections: None,
    }])
    .await
    .unwrap();
    // An older beat arriving late does not move last-seen backwards.
    s.record_beats(&[Beat {
        peer_id: id,
        at_ms: 4000,
        uploaded: None,
        downloaded: None,
        connections: None,
    }])
    .await
    .unwrap();
    let info = s.get_peer(&id, 0).await.unwrap().unwrap();
    assert_eq!(info.last_seen_ms, 5000);
    assert_eq!(info.registered_at_ms, 1000);
    assert_eq!(info.uploaded, 10);
    assert_eq!(info.addresses, vec!["192.0.2.1", "host.example"]);
    assert_eq!(info.udp_port, Some(6882));
    assert_eq!(info.name.as_deref(), Some("laptop"));
    assert!(info.online);
    assert!(
        !s.get_peer(&id, 5001).await.unwrap().unwrap().online,
        "stale at a later cutoff"
    );

    let page = s
        .list_peers(&PeerQuery {
            online_only: true,
            offset: 0,
            limit: 10,
            cutoff_ms: 5000,
        })
        .await
        .unwrap();
    assert_eq!((page.total, page.items.len()), (1, 1));
    let page = s
        .list_peers(&PeerQuery {
            online_only: true,
            offset: 0,
            limit: 10,
            cutoff_ms: 6000,
        })
        .await
        .unwrap();
    assert_eq!(page.total, 0);

    assert_eq!(s.expire_peers(6000).await.unwrap(), vec![id]);
    assert_eq!(
        s.expire_peers(6000).await.unwrap(),
        vec![],
        "expired once only"
    );
    assert!(!s.peer_presence(&id).await.unwrap().unwrap().online);
    assert!(s.delete_peer(&id).await.unwrap());
    assert!(!s.delete_peer(&id).await.unwrap());
}

async fn heartbeat_batches(s: Arc<dyn Store>) {
    let (a, b, unknown) = (peer_id(), peer_id(), peer_id());
    s.register_peer(&new_peer(a), 1000).await.unwrap();
    s.register_peer(&new_peer(b), 1000).await.unwrap();
    s.expire_peers(1001).await.unwrap();
    let beat = |peer_id, at_ms, uploaded| Beat {
        peer_id,
        at_ms,
        uploaded,
        downloaded: None,
        connections: None,
    };
    let before = s
        .record_beats(&[
            beat(a, 5000, Some(1)),
            beat(unknown, 5000, None),
            beat(a, 6000, Some(2)),
            beat(b, 900, None),
        ])
        .await
        .unwrap();
    assert_eq!(before.len(), 4, "one answer per beat, in order");
    assert_eq!(
        before[0],
        Some(Presence {
            online: false,
            last_seen_ms: 1000
        })
    );
    assert_eq!(before[1], None, "unknown peers are reported");
    assert_eq!(
        before[2], before[0],
        "both beats of a saw the state before the batch"
    );
    assert!(before[3].is_some());
    let info = s.get_peer(&a, 0).await.unwrap().unwrap();
    assert_eq!(
        (info.last_seen_ms, info.uploaded, info.online),
        (6000, 2, true),
        "latest beat wins"
    );
    let info = s.get_peer(&b, 0).await.unwrap().unwrap();
    assert_eq!(
        info.last_seen_ms, 1000,
        "an older beat never moves last-seen back"
    );
    assert!(
        s.peer_presence(&unknown).await.unwrap().is_none(),
        "beats create no peers"
    );
    assert_eq!(s.record_beats(&[]).await.unwrap(), vec![]);
}

/// A peer's connections, checking that the listing and the single lookup agree.
async fn connections_of(s: &dyn Store, id: &PeerId) -> Vec<PeerConnection> {
    let listed = s
        .list_peers(&PeerQuery {
            online_only: false,
            offset: 0,
            limit: 10,
            cutoff_ms: 0,
        })
        .await
        .unwrap();
    let one = s.get_peer(id, 0).await.unwrap().unwrap();
    assert_eq!(listed.items, vec![one.clone()], "listed as looked up");
    one.connections
}

async fn peer_connections(s: Arc<dyn Store>) {
    let (a, b, c) = (peer_id(), peer_id(), peer_id());
    s.register_peer(&new_peer(a), 1000).await.unwrap();
    let to = |peer_id, path| PeerConnection { peer_id, path };
    let beat = |at_ms, connections| Beat {
        peer_id: a,
        at_ms,
        uploaded: None,
        downloaded: None,
        connections,
    };
    assert_eq!(
        connections_of(&*s, &a).await,
        vec![],
        "none before a heartbeat"
    );

    let reported = vec![
        to(b, ConnectionPathKind::Direct),
        to(c, ConnectionPathKind::Relayed),
    ];
    s.record_beats(&[beat(2000, Some(reported.clone()))])
        .await
        .unwrap();
    assert_eq!(connections_of(&*s, &a).await, reported);
    s.record_beats(&[beat(3000, None)]).await.unwrap();
    assert_eq!(connections_of(&*s, &a).await, reported, "absent: unchanged");

    // In one batch the latest beat wins, wherever it stands in the batch.
    let punched = vec![to(b, ConnectionPathKind::HolePunched)];
    s.record_beats(&[beat(4000, Some(punched.clone())), beat(5000, Some(vec![]))])
        .await
        .unwrap();
    assert_eq!(
        connections_of(&*s, &a).await,
        vec![],
        "an empty list clears"
    );
    s.record_beats(&[
        beat(7000, Some(punched.clone())),
        beat(6000, Some(reported.clone())),
    ])
    .await
    .unwrap();
    assert_eq!(connections_of(&*s, &a).await, punched);
    s.record_beats(&[beat(6500, Some(reported))]).await.unwrap();
    assert_eq!(
        connections_of(&*s, &a).await,
        punched,
        "a late beat changes nothing"
    );

    s.register_peer(&new_peer(a), 8000).await.unwrap();
    assert_eq!(
        connections_of(&*s, &a).await,
        vec![],
        "registering again starts afresh"
    );
}

async fn announces_and_swarms(s: Arc<dyn Store>) {
    let (a, b, c) = (peer_id(), peer_id(), peer_id());
    for p in [a, b, c] {
        s.register_peer(&new_peer(p), 1000).await.unwrap();
    }
    let m = manifest("data.bin", &content(700_000, 1));
    assert!(!s.has_file(&m.id).await.unwrap(), "not yet announced");
    assert_eq!(
        s.announce(&a, &m, None, 1000, &RULES).await.unwrap(),
        CREATED
    );
    assert!(s.has_file(&m.id).await.unwrap());
    assert_eq!(
        s.announce(&a, &m, None, 1001, &RULES).await.unwrap(),
        existing(1)
    );
    let mut have = Bitfield::new(m.chunk_count());
    have.set(2);
    assert_eq!(
        s.announce(&b, &m, Some(&have), 1002, &RULES).await.unwrap(),
        existing(1)
    );
    // A full bitfield is stored as complete.
    let full = Bitfield::full(m.chunk_count());
    s.announce(&c, &m, Some(&full), 1003, &RULES).await.unwrap();
    assert_eq!(
        s.announce(&peer_id(), &m, None, 1, &RULES).await.unwrap(),
        AnnounceOutcome::UnknownPeer
    );

    let rec = s.get_file(&m.id, 0, None).await.unwrap().unwrap();
    assert_eq!(rec.manifest, m, "manifest round-trips exactly");
    assert_eq!((rec.seeders, rec.leechers), (2, 1));
    assert_eq!(rec.created_at_ms, 1000);

    let (chunks, peers) = s
        .file_peers(&m.id, 0, None, 10, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(chunks, 3);
    assert_eq!(peers.len(), 3);
    assert!(peers[0].complete && peers[1].complete && !peers[2].complete);
    assert_eq!(peers[2].peer_id, b);
    assert_eq!(peers[2].have.as_deref(), Some(have.to_base64().as_str()));
    assert_eq!(peers[2].chunks_have, 1);
    assert_eq!(
        peers[0].addresses.last().map(String::as_str),
        Some("198.51.100.7")
    );
    let (_, peers) = s
        .file_peers(&m.id, 0, Some(&a), 10, None)
        .await
        .unwrap()
        .unwrap();
    assert!(peers.iter().all(|p| p.peer_id != a));
    let (_, peers) = s
        .file_peers(&m.id, 0, None, 1, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(
        s.file_peers(&peer_file_id(), 0, None, 10, None)
            .await
            .unwrap(),
        None
    );

    // Peers past the cutoff are not handed out or counted.
    s.record_beats(&[Beat {
        peer_id: a,
        at_ms: 9000,
        uploaded: None,
        downloaded: None,
        connections: None,
    }])
    .await
    .unwrap();
    let (_, peers) = s
        .file_peers(&m.id, 5000, None, 10, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peers.iter().map(|p| p.peer_id).collect::<Vec<_>>(), vec![a]);
    let rec = s.get_file(&m.id, 5000, None).await.unwrap().unwrap();
    assert_eq!((rec.seeders, rec.leechers), (1, 0));

    // Deleting a peer removes its announces, not the file.
    s.delete_peer(&a).await.unwrap();
    let (_, peers) = s
        .file_peers(&m.id, 0, None, 10, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peers.len(), 2);
}

/// A manifest under `m`'s id that is not `m`'s: what a squatter announces.
fn squatted(m: &p2p_proto::Manifest, seed: u64) -> p2p_proto::Manifest {
    let mut other = manifest(&m.name, &content(800_000, seed));
    other.id = m.id;
    other
}

/// Differing manifests of one id are kept side by side, each with its announcers; the file's
/// manifest is the one most live peers announced; variants are bounded per file (room is made
/// from variants no live peer holds) and per principal.
async fn manifest_variants_and_quotas(s: Arc<dyn Store>) {
    let (squatter, h1, h2, late) = (peer_id(), peer_id(), peer_id(), peer_id());
    for p in [squatter, h1, h2, late] {
        s.register_peer(&new_peer(p), 1000).await.unwrap();
    }
    let m = manifest("data.bin", &content(700_000, 5));
    let bogus = squatted(&m, 6);
    assert_eq!(
        s.announce(&squatter, &bogus, None, 1000, &RULES)
            .await
            .unwrap(),
        CREATED
    );
    assert_eq!(
        s.announce(&h1, &m, None, 1001, &RULES).await.unwrap(),
        new_variant(2),
        "the honest announce is accepted beside the squatter's"
    );
    assert_eq!(
        s.announce(&h2, &m, None, 1002, &RULES).await.unwrap(),
        existing(2)
    );

    let rec = s.get_file(&m.id, 0, None).await.unwrap().unwrap();
    assert_eq!(
        (rec.variant, &rec.manifest),
        (2, &m),
        "most announcers first"
    );
    assert_eq!(
        rec.variants
            .iter()
            .map(|v| (v.variant, v.seeders, v.size))
            .collect::<Vec<_>>(),
        vec![(2, 2, m.size), (1, 1, bogus.size)]
    );
    assert_eq!((rec.seeders, rec.leechers), (3, 0));
    let first = s.get_file(&m.id, 0, Some(1)).await.unwrap().unwrap();
    assert_eq!((first.variant, &first.manifest), (1, &bogus));
    assert_eq!(s.get_file(&m.id, 0, Some(9)).await.unwrap(), None);

    let ids = |peers: &[FilePeer]| {
        let mut ids: Vec<_> = peers.iter().map(|p| (p.peer_id, p.variant)).collect();
        ids.sort();
        ids
    };
    let (chunks, peers) = s
        .file_peers(&m.id, 0, None, 10, Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (chunks, ids(&peers)),
        (bogus.chunk_count(), vec![(squatter, Some(1))])
    );
    let (chunks, peers) = s
        .file_peers(&m.id, 0, None, 10, Some(2))
        .await
        .unwrap()
        .unwrap();
    let mut honest = vec![(h1, Some(2)), (h2, Some(2))];
    honest.sort();
    assert_eq!((chunks, ids(&peers)), (m.chunk_count(), honest));
    let (_, peers) = s
        .file_peers(&m.id, 0, None, 10, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peers.len(), 3);
    assert_eq!(
        s.file_peers(&m.id, 0, None, 10, Some(9)).await.unwrap(),
        None
    );

    // At the cap, with every variant held by a live peer, a new one from the principal that
    // stored them is refused…
    let two = AnnounceRules {
        max_variants_per_file: 2,
        ..RULES
    };
    let third = squatted(&m, 7);
    assert_eq!(
        s.announce(&late, &third, None, 2000, &two).await.unwrap(),
        AnnounceOutcome::TooManyVariants
    );
    // … while one from another principal takes the place of that principal's variant with
    // the fewest live announcers: one principal cannot lock others out.
    let bob = AnnounceRules {
        principal: "user:bob",
        ..two
    };
    assert_eq!(
        s.announce(&late, &third, None, 2001, &bob).await.unwrap(),
        new_variant(3),
        "variant numbers are not reused"
    );
    assert_eq!(s.get_file(&m.id, 0, Some(1)).await.unwrap(), None);
    let (_, peers) = s
        .file_peers(&m.id, 0, None, 10, None)
        .await
        .unwrap()
        .unwrap();
    assert!(
        peers.iter().all(|p| p.peer_id != squatter),
        "the dropped variant's claims go with it"
    );
    assert_eq!(
        s.announce(&late, &squatted(&m, 8), None, 2002, &bob)
            .await
            .unwrap(),
        AnnounceOutcome::TooManyVariants,
        "no principal has several variants to give up"
    );
    // A variant no live peer holds makes room: `late` went silent.
    let fresh = peer_id();
    s.register_peer(&new_peer(fresh), 9000).await.unwrap();
    let beat = |peer_id| Beat {
        peer_id,
        at_ms: 9000,
        uploaded: None,
        downloaded: None,
        connections: None,
    };
    s.record_beats(&[beat(h1), beat(h2)]).await.unwrap();
    let two_live = AnnounceRules {
        cutoff_ms: 5000,
        ..two
    };
    assert_eq!(
        s.announce(&fresh, &squatted(&m, 9), None, 9000, &two_live)
            .await
            .unwrap(),
        new_variant(4)
    );
    assert_eq!(s.get_file(&m.id, 0, Some(3)).await.unwrap(), None);
    // A peer announcing another variant moves its claim there.
    assert_eq!(
        s.announce(&fresh, &m, None, 9001, &two_live).await.unwrap(),
        existing(2)
    );
    let rec = s.get_file(&m.id, 5000, None).await.unwrap().unwrap();
    assert_eq!(
        rec.variants
            .iter()
            .map(|v| (v.variant, v.online()))
            .collect::<Vec<_>>(),
        vec![(2, 3), (4, 0)]
    );

    // Per principal: new variants count against its quota, known ones do not; other
    // principals are not affected.
    let one = AnnounceRules {
        principal: "user:mallory",
        max_variants_per_principal: 1,
        ..RULES
    };
    let a = manifest("a.bin", &content(1000, 18));
    let b = manifest("b.bin", &content(1000, 19));
    assert_eq!(
        s.announce(&late, &a, None, 9002, &one).await.unwrap(),
        CREATED
    );
    assert_eq!(
        s.announce(&late, &b, None, 9003, &one).await.unwrap(),
        AnnounceOutcome::QuotaExceeded
    );
    assert_eq!(s.get_file(&b.id, 0, None).await.unwrap(), None);
    assert_eq!(
        s.announce(&late, &m, None, 9004, &one).await.unwrap(),
        existing(2),
        "a stored manifest costs no quota"
    );
    assert_eq!(
        s.announce(&h1, &b, None, 9005, &RULES).await.unwrap(),
        CREATED
    );
}

fn peer_file_id() -> p2p_proto::FileId {
    p2p_proto::FileId([7; 32])
}

async fn listing_and_stats(s: Arc<dyn Store>) {
    let p = peer_id();
    s.register_peer(&new_peer(p), 100).await.unwrap();
    for (i, name) in ["Alpha.txt", "beta_1.txt", "beta%2.txt", "gamma.txt"]
        .iter()
        .enumerate()
    {
        let m = manifest(name, &content(1000 * (i + 1), i as u64));
        s.announce(&p, &m, None, 100 + i as u64, &RULES)
            .await
            .unwrap();
    }
    let q = |search: &str, offset, limit| FileQuery {
        search: search.into(),
        offset,
        limit,
        cutoff_ms: 0,
    };
    let page = s.list_files(&q("", 0, 10)).await.unwrap();
    assert_eq!(page.total, 4);
    let names: Vec<_> = page.items.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["gamma.txt", "beta%2.txt", "beta_1.txt", "Alpha.txt"]
    );
    assert_eq!(
        s.list_files(&q("ALPHA", 0, 10)).await.unwrap().total,
        1,
        "case-insensitive"
    );
    let page = s.list_files(&q("beta_", 0, 10)).await.unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["beta_1.txt"]
    );
    assert_eq!(
        s.list_files(&q("%", 0, 10)).await.unwrap().total,
        1,
        "wildcards are literal"
    );
    let page = s.list_files(&q("", 1, 2)).await.unwrap();
    assert_eq!(page.total, 4);
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0].name, "beta%2.txt");
    assert_eq!(page.items[0].seeders, 1);

    let stats = s.stats(0).await.unwrap();
    assert_eq!(
        (stats.peers_online, stats.peers_total, stats.files),
        (1, 1, 4)
    );
    assert_eq!(stats.total_bytes, 10_000);
    assert_eq!(s.stats(1000).await.unwrap().peers_online, 0);
}

async fn users_keys_and_settings(s: Arc<dyn Store>) {
    let u = UserRecord {
        username: "alice".into(),
        password_hash: "h1".into(),
        role: "admin".into(),
        created_at_ms: 5,
    };
    assert!(s.create_user_if_absent(&u).await.unwrap());
    assert!(
        !s.create_user_if_absent(&UserRecord {
            password_hash: "other".into(),
            ..u.clone()
        })
        .await
        .unwrap()
    );
    assert_eq!(
        s.get_user("alice").await.unwrap().unwrap().password_hash,
        "h1"
    );
    s.put_user(&UserRecord {
        password_hash: "h2".into(),
        ..u.clone()
    })
    .await
    .unwrap();
    assert_eq!(
        s.get_user("alice").await.unwrap().unwrap().password_hash,
        "h2"
    );
    assert_eq!(s.list_users().await.unwrap().len(), 1);
    assert!(s.delete_user("alice").await.unwrap());
    assert!(s.get_user("alice").await.unwrap().is_none());

    let key = ApiKeyRecord {
        id: "k1".into(),
        name: "ci".into(),
        created_at_ms: 9,
        revoked_at_ms: None,
    };
    s.create_api_key(&key, "hash1").await.unwrap();
    assert_eq!(s.find_api_key("hash1").await.unwrap(), Some(key.clone()));
    assert!(
        s.create_api_key(&key, "hash2").await.is_err(),
        "ids are unique"
    );
    assert!(s.revoke_api_key("k1", 10).await.unwrap());
    assert!(!s.revoke_api_key("k1", 11).await.unwrap());
    assert_eq!(s.find_api_key("hash1").await.unwrap(), None);
    assert_eq!(s.list_api_keys().await.unwrap()[0].revoked_at_ms, Some(10));

    assert_eq!(
        s.setting_or_init("jwt_secret", "first").await.unwrap(),
        "first"
    );
    assert_eq!(
        s.setting_or_init("jwt_secret", "second").await.unwrap(),
        "first"
    );
    s.ping().await.unwrap();
}

/// A peer's home relay is stored with its entry and shown in listings and swarms; each running
/// tracker's report replaces its last one, and stale reports drop out.
async fn relay_fleet(s: Arc<dyn Store>) {
    let (a, b) = (peer_id(), peer_id());
    let relay1 = "http://relay-1.example:8080".to_owned();
    let relay2 = "http://relay-2.example:8080".to_owned();
    let homed = |id, relay: &str| NewPeer {
        relay: Some(relay.to_owned()),
        ..new_peer(id)
    };
    s.register_peer(&homed(a, &relay1), 1000).await.unwrap();
    s.register_peer(&new_peer(b), 1000).await.unwrap();
    assert_eq!(
        s.get_peer(&a, 0).await.unwrap().unwrap().relay,
        Some(relay1.clone())
    );
    assert_eq!(s.get_peer(&b, 0).await.unwrap().unwrap().relay, None);
    let m = manifest("homed.bin", &content(1000, 9));
    for p in [a, b] {
        s.announce(&p, &m, None, 1000, &RULES).await.unwrap();
    }
    let relays_of = |peers: Vec<FilePeer>| {
        let mut r: Vec<_> = peers.into_iter().map(|p| (p.peer_id, p.relay)).collect();
        r.sort();
        r
    };
    let (_, peers) = s
        .file_peers(&m.id, 0, None, 10, None)
        .await
        .unwrap()
        .unwrap();
    let mut want = vec![(a, Some(relay1.clone())), (b, None)];
    want.sort();
    assert_eq!(relays_of(peers), want);
    // Re-homed: registering again replaces the relay (and keeps the announce).
    s.register_peer(&homed(a, &relay2), 2000).await.unwrap();
    let (_, peers) = s
        .file_peers(&m.id, 0, None, 10, None)
        .await
        .unwrap()
        .unwrap();
    let mut want = vec![(a, Some(relay2.clone())), (b, None)];
    want.sort();
    assert_eq!(relays_of(peers), want);
    let listed = s
        .list_peers(&PeerQuery {
            online_only: false,
            offset: 0,
            limit: 10,
            cutoff_ms: 0,
        })
        .await
        .unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|p| p.peer_id == a && p.relay == Some(relay2.clone()))
    );

    let report = |id: &str, relay: Option<&str>, attached, at| InstanceRecord {
        id: id.to_owned(),
        relay_url: relay.map(str::to_owned),
        relay_attached: attached,
        ws_clients: 1,
        last_seen_ms: at,
    };
    s.put_instance(&report("api", None, 0, 1000)).await.unwrap();
    s.put_instance(&report("r1", Some(&relay1), 5, 1000))
        .await
        .unwrap();
    s.put_instance(&report("r2", Some(&relay2), 7, 1000))
        .await
        .unwrap();
    // A later report replaces the earlier one.
    s.put_instance(&report("r1", Some(&relay1), 6, 3000))
        .await
        .unwrap();
    assert_eq!(
        s.live_instances(0).await.unwrap(),
        vec![
            report("api", None, 0, 1000),
            report("r1", Some(&relay1), 6, 3000),
            report("r2", Some(&relay2), 7, 1000),
        ]
    );
    assert_eq!(
        s.live_instances(2000).await.unwrap(),
        vec![report("r1", Some(&relay1), 6, 3000)]
    );
    // Leaving deletes the own report and the stale ones.
    s.delete_instances("api", 2000).await.unwrap();
    assert_eq!(
        s.live_instances(0).await.unwrap(),
        vec![report("r1", Some(&relay1), 6, 3000)]
    );
    s.delete_instances("r1", 0).await.unwrap();
    assert!(s.live_instances(0).await.unwrap().is_empty());
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let db = TestDb::sqlite();
                    let store = db.open().await;
                    assert_eq!(store.backend(), Backend::Sqlite);
                    within(60, super::$case(store)).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(url) = postgres_url() else {
                        return skip(concat!("postgres store ", stringify!($case)), "P2P_TEST_POSTGRES_URL is not set");
                    };
                    let db = TestDb::postgres(&url);
                    let store = db.open().await;
                    assert_eq!(store.backend(), Backend::Postgres);
                    within(60, super::$case(store)).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

suite!(
    peers_and_presence,
    heartbeat_batches,
    peer_connections,
    announces_and_swarms,
    manifest_variants_and_quotas,
    listing_and_stats,
    users_keys_and_settings,
    relay_fleet
);

/// A file stored before chains were kept (an empty `chain`) gets the chain of the next announce
/// that brings one; a stored chain is not replaced.
async fn a_file_stored_without_a_chain_gets_one(db: &TestDb) {
    let s = db.open().await;
    let peer = peer_id();
    s.register_peer(&new_peer(peer), 1000).await.unwrap();
    let m = manifest("old.bin", &content(700_000, 3));
    s.announce(&peer, &m, None, 1000, &RULES).await.unwrap();
    db.execute_raw("UPDATE file_variants SET chain = $1", Vec::new())
        .await;
    let stored = s.get_file(&m.id, 0, None).await.unwrap().unwrap().manifest;
    assert!(stored.chain.is_empty() && stored.validate().is_err());
    assert_eq!(
        s.announce(&peer, &m, None, 2000, &RULES).await.unwrap(),
        existing(1)
    );
    assert_eq!(
        s.get_file(&m.id, 0, None).await.unwrap().unwrap().manifest,
        m
    );
    // Another chain is another variant; the stored one stays.
    let mut other = m.clone();
    other.chain[0].0[0] ^= 1;
    assert_eq!(
        s.announce(&peer, &other, None, 3000, &RULES).await.unwrap(),
        new_variant(2)
    );
    assert_eq!(
        s.get_file(&m.id, 0, Some(1))
            .await
            .unwrap()
            .unwrap()
            .manifest,
        m
    );
}

#[tokio::test]
async fn sqlite_legacy_file_gets_a_chain() {
    let db = TestDb::sqlite();
    within(60, a_file_stored_without_a_chain_gets_one(&db)).await;
}

#[tokio::test]
async fn postgres_legacy_file_gets_a_chain() {
    let Some(url) = postgres_url() else {
        return skip(
            "postgres legacy file chain",
            "P2P_TEST_POSTGRES_URL is not set",
        );
    };
    let db = TestDb::postgres(&url);
    within(60, a_file_stored_without_a_chain_gets_one(&db)).await;
    db.cleanup().await;
}
