//! The test-server harness itself: servers never share a port, each one is
//! proven to be the one its owner started, and a local Redis Cluster works.
#![cfg(feature = "redis")]

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livedict::{Callback, Event, EventKind, LiveDict};
use support::redis_server::{RedisCluster, RedisServer, info_field};

/// 200 servers started and stopped from 8 threads at once: every one answers
/// with its own pid, and no two ran on one port at the same time.
#[test]
fn two_hundred_servers_from_eight_threads_are_each_their_own() {
    if RedisServer::start().is_none() {
        return;
    }
    let live_ports = Arc::new(Mutex::new(HashSet::new()));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let live_ports = Arc::clone(&live_ports);
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let server = RedisServer::start().expect("redis-server");
                    let port = server.port();
                    assert!(live_ports.lock().unwrap().insert(port), "port {port} handed out twice at once");
                    let info = server.command(&["INFO", "server"]).expect("INFO");
                    let pid = info_field(&info, "process_id").expect("process_id");
                    assert_eq!(
                        pid,
                        server.pid().unwrap().to_string(),
                        "port {port} answered by another server"
                    );
                    // A write is seen by our server alone.
                    server.command(&["SET", "owner", &pid]).unwrap();
                    assert_eq!(server.command(&["GET", "owner"]).unwrap(), pid);
                    live_ports.lock().unwrap().remove(&port);
                    drop(server);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("stress thread");
    }
}

/// A restarted server comes back on its port, as itself.
#[test]
fn a_restarted_server_is_proven_again() {
    let Some(mut server) = RedisServer::start() else { return };
    let (port, before) = (server.port(), server.pid());
    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), before);
    let info = server.command(&["INFO", "server"]).unwrap();
    assert_eq!(info_field(&info, "process_id"), server.pid().map(|p| p.to_string()));
}

/// A `redis-cluster://` store on a local 3-master cluster: CRUD, TTL, and an
/// Expire event carrying its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_works_on_a_local_cluster() {
    let Some(cluster) = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0)).await.unwrap() else {
        return;
    };
    assert_eq!(cluster.current_masters().len(), 3);
    let d = LiveDict::<String>::open(&format!("{}&namespace=smoke", cluster.url())).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    d.register_callback(
        EventKind::Expire,
        Callback::new(move |ev: &Event<String>| {
            s.lock().unwrap().push((ev.key().to_owned(), ev.value().cloned()));
        }),
    )
    .unwrap();
    d.set("a", "1".into()).await.unwrap();
    assert_eq!(d.get("a").await.unwrap().as_deref(), Some("1"));
    assert!(d.exists("a").await.unwrap());
    d.set_with_ttl("b", "2".into(), Duration::from_millis(800)).await.unwrap();
    assert!(d.ttl("b").await.unwrap().is_some());
    assert_eq!(d.len().await.unwrap(), 2);
    assert!(d.delete("a").await.unwrap());
    assert_eq!(d.get("a").await.unwrap(), None);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no Expire event from the cluster store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.lock().unwrap().clone(), vec![("b".to_owned(), Some("2".to_owned()))]);
    assert_eq!(d.get("b").await.unwrap(), None);
    d.shutdown().await.unwrap();
}

/// One namespace spreads over every master of a 3-master cluster: 3,000 TTL'd
/// keys, each master holds at least 15 % of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_namespace_spreads_over_every_master() {
    let Some(cluster) = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0)).await.unwrap() else {
        return;
    };
    let d = LiveDict::<u32>::open(&format!("{}&namespace=spread", cluster.url())).await.unwrap();
    let n = 3000;
    let writes: Vec<_> = (0..n)
        .map(|i| {
            let d = d.clone();
            async move { d.set_with_ttl(format!("key:{i}"), i, Duration::from_secs(600)).await }
        })
        .collect();
    for r in futures::future::join_all(writes).await {
        r.unwrap();
    }
    assert_eq!(d.len().await.unwrap(), n as usize);
    let values: Vec<(u16, usize)> = cluster
        .current_masters()
        .into_iter()
        .map(|i| {
            let node = &cluster.nodes()[i];
            let count = support::redis_server::scan(node.port(), "ld:{spread:*}:v:*").len();
            (node.port(), count)
        })
        .collect();
    assert_eq!(values.len(), 3);
    assert_eq!(values.iter().map(|(_, c)| c).sum::<usize>(), n as usize, "{values:?}");
    for (port, count) in &values {
        assert!(*count * 100 >= n as usize * 15, "master {port} holds {count} of {n} keys: {values:?}");
    }
    eprintln!("keys per master: {values:?}");
    d.shutdown().await.unwrap();
}
