//! Background tasks: `LISTEN` for other processes' commits, and a monitor that polls the
//! head (the fallback when a notification is lost) and reports a stalled append lock.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use crate::pool::{Shared, Stall, db_error};

/// Listens on the events and checkpoints channels until stopped, reconnecting on failure.
pub(crate) async fn listen(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        match shared.config.connect(shared.tls.clone()).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let pump = tokio::spawn(async move {
                    let mut messages = std::pin::pin!(messages);
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(m) => {
                                if tx.send(m).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "listen connection closed");
                                return;
                            }
                        }
                    }
                });
                let listen = format!(
                    "LISTEN \"{}\"; LISTEN \"{}\"",
                    shared.events_channel.replace('"', ""),
                    shared.checkpoints_channel.replace('"', "")
                );
                if let Err(e) = client.batch_execute(&listen).await {
                    tracing::warn!(error = %db_error(&e), "LISTEN failed; polling only");
                } else {
                    backoff = Duration::from_millis(100);
                    loop {
                        tokio::select! {
                            m = rx.recv() => match m {
                                Some(AsyncMessage::Notification(n)) => {
                                    if n.channel() == shared.events_channel {
                                        if let Ok(p) = n.payload().parse::<u64>() {
                                            shared.advance_head(p);
                                        }
                                    } else {
                                        shared.checkpoints.send_modify(|c| *c += 1);
                                    }
                                }
                                Some(_) => {}
                                None => break,
                            },
                            _ = stop.changed() => { pump.abort(); return; }
                        }
                    }
                }
                pump.abort();
            }
            Err(e) => tracing::warn!(error = %db_error(&e), "cannot connect for LISTEN; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

const STALL_SQL: &str =
    "SELECT l.pid, extract(epoch FROM clock_timestamp() - a.xact_start)::float8,
        (SELECT count(*) FROM pg_locks w WHERE w.locktype = 'advisory' AND NOT w.granted
            AND w.database = l.database AND w.classid = l.classid AND w.objid = l.objid
            AND w.objsubid = l.objsubid)
     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.classid = (($1::bigint >> 32) & 4294967295)::oid
       AND l.objid = ($1::bigint & 4294967295)::oid AND l.objsubid = 1";

/// Every poll interval: the head (in case a notification was missed), who holds the append
/// lock and for how long, and the database size (less often).
pub(crate) async fn monitor(shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut ticks: u64 = 0;
    let mut reported_pid = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(shared.options.poll_interval.min(shared.options.stall_threshold / 2)) => {}
            _ = stop.changed() => {
                // Leaving: the others stop counting this process at once.
                if let Ok(client) = shared.pool.get().await {
                    let _ = client.execute("DELETE FROM members WHERE id = $1", &[&shared.member_id]).await;
                }
                return;
            }
        }
        let Ok(client) = shared.pool.get().await else { continue };
        let now_us = cairn_core::timestamp::Timestamp::now().as_micros();
        if let Err(e) = client
            .execute(
                "INSERT INTO members (id, seen_us) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET seen_us = excluded.seen_us",
                &[&shared.member_id, &now_us],
            )
            .await
        {
            tracing::debug!(error = %db_error(&e), "membership heartbeat failed");
        }
        if let Ok(row) =
            client.query_one("SELECT coalesce(max(position), 0) FROM events", &[]).await
        {
            shared.advance_head(row.get::<_, i64>(0) as u64);
        }
        if let Ok(rows) = client.query(STALL_SQL, &[&shared.append_lock]).await {
            let stall = rows.first().and_then(|r| {
                let age: Option<f64> = r.get(1);
                let age = age.unwrap_or(0.0);
                (age >= shared.options.stall_threshold.as_secs_f64()).then(|| Stall {
                    pid: r.get(0),
                    age_secs: age,
                    waiting: r.get(2),
                })
            });
            match &stall {
                Some(s) if reported_pid != Some(s.pid) => {
                    tracing::warn!(
                        blocking_pid = s.pid,
                        age_secs = s.age_secs,
                        waiting_appends = s.waiting,
                        "the append lock has been held for {:.1} s by backend pid {}: appends wait behind it (pg_terminate_backend({}) ends it)",
                        s.age_secs,
                        s.pid,
                        s.pid
                    );
                    reported_pid = Some(s.pid);
                }
                None if reported_pid.is_some() => {
                    tracing::info!("append lock released; appends resume");
                    reported_pid = None;
                }
                _ => {}
            }
            *shared.stall.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = stall;
        }
        if ticks.is_multiple_of(30)
            && let Ok(row) =
                client.query_one("SELECT pg_database_size(current_database())", &[]).await
        {
            shared.size.store(row.get::<_, i64>(0) as u64, Ordering::Relaxed);
        }
        ticks += 1;
    }
}
