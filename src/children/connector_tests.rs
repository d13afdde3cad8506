use super::*;

/// One netlink message carrying one proc event, as the kernel sends it.
fn event(what: u32, parent_pid: u32, parent_tgid: u32, child_pid: u32, child_tgid: u32) -> Vec<u8> {
    let mut ev = Vec::new();
    ev.extend_from_slice(&what.to_ne_bytes());
    ev.extend_from_slice(&0u32.to_ne_bytes()); // cpu
    ev.extend_from_slice(&0u64.to_ne_bytes()); // timestamp
    for v in [parent_pid, parent_tgid, child_pid, child_tgid] {
        ev.extend_from_slice(&v.to_ne_bytes());
    }
    let total = NLMSG_HDRLEN + CN_MSG_LEN + ev.len();
    let mut m = Vec::new();
    m.extend_from_slice(&(total as u32).to_ne_bytes());
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    m.extend_from_slice(&[0; 10]);
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(&(ev.len() as u16).to_ne_bytes());
    m.extend_from_slice(&[0; 2]);
    m.extend_from_slice(&ev);
    m
}

/// PROC_EVENT_COMM: what a rename sends.
const PROC_EVENT_COMM: u32 = 0x0000_0200;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

#[test]
fn forks_are_parsed_and_threads_ignored() {
    let mut dgram = event(PROC_EVENT_FORK, 100, 100, 101, 101);
    dgram.extend(event(PROC_EVENT_FORK, 102, 100, 103, 100)); // a thread of 100
    dgram.extend(event(PROC_EVENT_EXIT, 0, 0, 0, 0));
    dgram.extend(event(PROC_EVENT_FORK, 105, 100, 106, 106)); // a thread of 100 forked
    assert_eq!(
        parse(&dgram),
        vec![
            Fork {
                parent_tgid: 100,
                child: 101
            },
            Fork {
                parent_tgid: 100,
                child: 106
            }
        ]
    );
}

#[test]
fn short_or_foreign_messages_are_skipped() {
    let full = event(PROC_EVENT_FORK, 1, 1, 2, 2);
    for cut in 0..full.len() {
        assert!(parse(&full[..cut]).is_empty(), "cut at {cut}");
    }
    let mut foreign = full.clone();
    foreign[NLMSG_HDRLEN] = 9; // another connector index
    assert!(parse(&foreign).is_empty());
    let mut zero_len = full.clone();
    zero_len[..4].copy_from_slice(&0u32.to_ne_bytes());
    assert!(parse(&zero_len).is_empty(), "a zero length must not loop");
}

#[test]
fn the_listen_message_has_the_kernel_layout() {
    let m = subscribe_message(false);
    assert_eq!(m.len(), 40);
    assert_eq!(u32_at(&m, 0), Some(40));
    assert_eq!(u32_at(&m, 16), Some(CN_IDX_PROC));
    assert_eq!(u16_at(&m, 32), Some(4));
    assert_eq!(u32_at(&m, 36), Some(PROC_CN_MCAST_LISTEN));
    // struct proc_input { mcast_op, event_type }: forks only.
    let m = subscribe_message(true);
    assert_eq!(m.len(), 44);
    assert_eq!(u32_at(&m, 0), Some(44));
    assert_eq!(u16_at(&m, 32), Some(8));
    assert_eq!(u32_at(&m, 36), Some(PROC_CN_MCAST_LISTEN));
    assert_eq!(u32_at(&m, 40), Some(PROC_EVENT_FORK));
}

/// The classic BPF the kernel runs, for the instructions the filter uses: absolute word loads
/// in network order (0 = drop when out of bounds), jumps on equality, tax, ret.
fn run(program: &[libc::sock_filter], pkt: &[u8]) -> u32 {
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    loop {
        let i = program[pc];
        pc += 1;
        match i.code {
            BPF_LD_W_ABS => {
                let at = i.k as usize;
                let Some(b) = pkt.get(at..at + 4) else {
                    return 0;
                };
                a = u32::from_be_bytes(b.try_into().unwrap());
            }
            BPF_JEQ_K | BPF_JEQ_X => {
                let k = if i.code == BPF_JEQ_K { i.k } else { x };
                pc += usize::from(if a == k { i.jt } else { i.jf });
            }
            BPF_TAX => x = a,
            BPF_RET_K => return i.k,
            other => panic!("unexpected instruction {other:#x}"),
        }
    }
}

#[test]
fn the_filter_passes_only_forks_of_watched_parents() {
    let p = filter_program(Some(&[100, 200]));
    let pass = |pkt: &[u8]| run(&p, pkt) != 0;
    assert!(pass(&event(PROC_EVENT_FORK, 100, 100, 101, 101)));
    assert!(
        pass(&event(PROC_EVENT_FORK, 201, 200, 202, 202)),
        "a thread of a watched main forked"
    );
    assert!(
        !pass(&event(PROC_EVENT_FORK, 300, 300, 301, 301)),
        "a fork of someone else"
    );
    assert!(
        !pass(&event(PROC_EVENT_FORK, 100, 100, 103, 100)),
        "a thread"
    );
    assert!(!pass(&event(PROC_EVENT_COMM, 100, 100, 0, 0)), "a rename");
    assert!(!pass(&event(PROC_EVENT_EXIT, 100, 100, 100, 100)));
    let full = event(PROC_EVENT_FORK, 100, 100, 101, 101);
    assert!(!pass(&full[..full.len() - 1]), "short");
    // Nobody watched: nothing passes; the fallback passes every process fork.
    assert!(run(&filter_program(Some(&[])), &full) == 0);
    let any = filter_program(None);
    assert!(run(&any, &event(PROC_EVENT_FORK, 300, 300, 301, 301)) != 0);
    assert!(run(&any, &event(PROC_EVENT_COMM, 300, 300, 0, 0)) == 0);
    // Within the kernel's 4096 instructions, and what passes agrees with parse().
    let many: Vec<u32> = (1..=MAX_FILTERED_PARENTS as u32).collect();
    let big = filter_program(Some(&many));
    assert!(big.len() <= 4096, "{} instructions", big.len());
    let last = event(PROC_EVENT_FORK, 1, MAX_FILTERED_PARENTS as u32, 5000, 5000);
    assert!(run(&big, &last) != 0 && !parse(&last).is_empty());
}

#[test]
fn lost_events_rescan_once_per_interval() {
    let t0 = Instant::now();
    let mut l = Losses::default();
    assert!(l.lost(t0), "the first loss rescans at once");
    assert_eq!(l.due(), None);
    for ms in [1, 10, 100, 4000] {
        assert!(!l.lost(t0 + Duration::from_millis(ms)));
    }
    assert_eq!(l.due(), Some(t0 + RESCAN_EVERY), "one rescan pending");
    assert!(!l.fire(t0 + RESCAN_EVERY - Duration::from_millis(1)));
    assert!(l.fire(t0 + RESCAN_EVERY));
    assert!(!l.fire(t0 + RESCAN_EVERY * 2), "fired once");
    assert_eq!((l.lost, l.rescans), (5, 2));
    // A loss long after: at once again.
    assert!(l.lost(t0 + RESCAN_EVERY * 10));
}

#[test]
fn warnings_about_lost_events_are_rate_limited() {
    let t0 = Instant::now();
    let mut l = Losses::default();
    assert_eq!(l.warning(t0), None, "nothing lost");
    l.lost(t0);
    assert_eq!(l.warning(t0), Some((1, 1)));
    for s in 1..30 {
        l.lost(t0 + Duration::from_secs(s));
        assert_eq!(l.warning(t0 + Duration::from_secs(s)), None);
    }
    l.lost(t0 + WARN_EVERY);
    assert_eq!(l.warning(t0 + WARN_EVERY), Some((30, 6)), "the count since");
}

#[test]
fn a_late_drop_leaves_the_new_owner_of_the_pid_subscribed() {
    // Instance A's main 4242 ended; its pid went to instance B's new main before A's
    // subscription was dropped.
    let hub: &'static Hub = Box::leak(Box::new(Hub::new(None)));
    let a = hub.subscribe(4242);
    let mut b = hub.subscribe(4242);
    drop(a);
    hub.dispatch(&event(PROC_EVENT_FORK, 4242, 4242, 4243, 4243));
    assert!(
        matches!(b.rx.try_recv(), Ok(Note::Forked { child: 4243, .. })),
        "B no longer hears its main's forks"
    );
    drop(b);
    assert!(hub.subs.lock().unwrap().is_empty());
}
