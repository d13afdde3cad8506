//! Issue 7, defect 11 (secrets): a `start_failed` event quotes the worker's argv, which may hold
//! secrets. Readers (here nobody, in the socket's group) see `command[0]` and a count, in
//! `events` and in `follow` streams; root sees the whole text.

use super::*;

const SECRET: &str = "--token=s3cret";

fn start_failed() -> EventRecord {
    EventRecord {
        action: "start_failed".into(),
        reason: Reason::Exited,
        message: format!(
            "cannot start the worker: cannot start \"/srv/app/bin/worker {SECRET} -v\": No such \
             file or directory (os error 2)"
        ),
        ..event(4)
    }
}

fn with_start_failed() -> FakeApi {
    FakeApi {
        history: vec![event(3), start_failed()],
        ..fake()
    }
}

fn messages(resp: Response) -> Vec<String> {
    match resp {
        Response::Ok(_) => {}
        Response::Err(e) => panic!("refused: {e:?}"),
    }
    let events: Vec<EventRecord> = match resp.clone().into_result() {
        Ok(list) => list,
        Err(_) => vec![resp.into_result::<EventRecord>().expect("one event")],
    };
    events.into_iter().map(|e| e.message).collect()
}

#[tokio::test]
async fn readers_never_see_the_command_line_root_does() {
    if !is_root() {
        return;
    }
    let srv = start_with(
        with_start_failed(),
        Access::new(Some(NOGROUP), vec![]),
        Limits::default(),
    )
    .await;
    let redacted = "cannot start the worker: cannot start \"/srv/app/bin/worker\" (2 arguments \
                    hidden): No such file or directory (os error 2)";

    let list = Request::Events {
        last: 10,
        follow: false,
    };
    let seen = messages(
        as_uid(NOBODY, NOBODY, &srv.path, &list)
            .await
            .expect("reachable"),
    );
    assert_eq!(seen, ["event 3", redacted]);

    // A follow stream's first line is the last event of the history.
    let follow = Request::Events {
        last: 1,
        follow: true,
    };
    let seen = messages(
        as_uid(NOBODY, NOBODY, &srv.path, &follow)
            .await
            .expect("reachable"),
    );
    assert_eq!(seen, [redacted]);

    // Root (and admins) get the whole text, secrets and all: they can read the policy anyway.
    let full: Vec<EventRecord> = client::call(&srv.path, &list).await.expect("root reads");
    assert!(full[1].message.contains(SECRET), "{}", full[1].message);
    srv.stop().await;
}

#[tokio::test]
async fn live_events_in_a_readers_stream_are_redacted_too() {
    if !is_root() {
        return;
    }
    let srv = start().await;
    let api = Arc::clone(&srv.api);
    // The reader's stream starts with nothing (`last: 0`); the event is published while it waits.
    let publisher = tokio::spawn(async move {
        for _ in 0..200 {
            if api.events.receiver_count() > 0 {
                api.events.send(start_failed()).expect("a subscriber");
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the reader never subscribed");
    });
    let follow = Request::Events {
        last: 0,
        follow: true,
    };
    let seen = messages(
        as_uid(NOBODY, NOBODY, &srv.path, &follow)
            .await
            .expect("reachable"),
    );
    publisher.await.expect("published");
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].contains(SECRET), "{}", seen[0]);
    assert!(seen[0].contains("(2 arguments hidden)"), "{}", seen[0]);
    srv.stop().await;
}
