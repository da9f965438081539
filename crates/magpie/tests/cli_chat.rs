//! Drives the real binary: a server and two `magpie chat` clients talking through pipes.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_magpie");
const PASSWORD: &str = "correct horse battery";
/// Generous: the binary is a debug build on a small shared machine.
const WAIT: Duration = Duration::from_secs(30);

/// A child process killed on drop, so a failing test leaves nothing running.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `magpie chat` process with piped stdin and line-by-line stdout.
struct Chat {
    name: &'static str,
    proc: Proc,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Everything read so far, for failure messages.
    seen: Vec<String>,
}

impl Chat {
    fn start(name: &'static str, server: SocketAddr, state: &Path, extra: &[&str]) -> Chat {
        let mut child = Command::new(BIN)
            .args([
                "chat",
                "--server",
                &format!("http://{server}"),
                "--user",
                name,
            ])
            .arg("--state-dir")
            .arg(state.join(name))
            .args(extra)
            .env_remove("MAGPIE_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Chat {
            name,
            proc: Proc { child },
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for a line containing `needle`; returns it.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{} never printed {needle:?}; saw {:#?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Like [`Chat::expect`], but also satisfied by a line already seen (for lines whose
    /// order relative to others is not fixed).
    fn expect_any_order(&mut self, needle: &str) {
        if !self.seen.iter().any(|l| l.contains(needle)) {
            self.expect(needle);
        }
    }

    /// Closes stdin (EOF) and waits for a clean exit.
    fn finish(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let status = self.proc.wait_exit();
        // The process is gone, so its stdout ends: read what the reader thread still holds.
        let deadline = Instant::now() + WAIT;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        assert!(
            status.success(),
            "{} exited with {status}; saw {:#?}",
            self.name,
            self.seen
        );
        self.seen
    }
}

fn start_server(data_dir: &Path) -> (Proc, SocketAddr) {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    (start_server_at(data_dir, addr), addr)
}

fn start_server_at(data_dir: &Path, addr: SocketAddr) -> Proc {
    let child = Command::new(BIN)
        .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(data_dir)
        .env("MAGPIE_ARGON2_M_KIB", "256")
        .env("MAGPIE_STORE_JOURNAL_MIB", "1")
        .env("MAGPIE_ARGON2_T", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let server = Proc { child };
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "server never listened on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// Registers bob (connected) and alice, who starts with `--to bob` (so asks to be friends).
fn alice_asks_bob(addr: SocketAddr, state: &Path) -> (Chat, Chat) {
    let with_password = ["--password", PASSWORD, "--register"];
    let mut bob = Chat::start("bob", addr, state, &with_password);
    bob.expect("* connected");
    let alice = Chat::start(
        "alice",
        addr,
        state,
        &[&with_password[..], &["--to", "bob"]].concat(),
    );
    (bob, alice)
}

#[test]
fn a_chat_started_while_the_server_is_down_enters_its_conversation_once_connected() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (server, addr) = start_server(&data);
    let state = tmp.path().join("state");
    let (mut bob, mut alice) = alice_asks_bob(addr, &state);
    alice.expect("friend request sent to bob");
    bob.expect("* friend request from alice");
    bob.type_line("/accept alice");
    alice.expect("* talking to bob");
    alice.type_line("/quit");
    assert!(alice.proc.wait_exit().success());
    drop(server);
    // The server is down: alice cannot even check her login yet; once it is back, she is in.
    let mut alice = Chat::start("alice", addr, &state, &["--to", "bob"]);
    alice.expect("! cannot check the saved login");
    let _server = start_server_at(&data, addr);
    alice.expect("* talking to bob");
    alice.type_line("made it");
    bob.expect("alice: made it");
    alice.finish();
    bob.finish();
}

#[test]
fn two_terminals_befriend_and_chat_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server(&tmp.path().join("data"));
    let state = tmp.path().join("state");
    // Alice wants to talk to bob, who is not a friend yet: a request goes out.
    let (mut bob, mut alice) = alice_asks_bob(addr, &state);
    alice.expect("friend request sent to bob; waiting for acceptance");
    alice.expect("* connected");
    let line = bob.expect("* friend request from alice");
    assert!(
        line.contains("/accept alice") && line.contains("/decline alice"),
        "{line}"
    );
    bob.type_line("/accept alice");
    bob.expect("* you and alice are now friends");
    bob.expect("* talking to alice");
    alice.expect("* bob accepted your friend request");
    alice.expect("* talking to bob");

    bob.type_line("hello alice");
    bob.expect("(sent #1)");
    let line = alice.expect("bob: hello alice");
    assert!(
        line.starts_with('[') && line.as_bytes().get(9) == Some(&b']'),
        "{line}"
    );

    // A line longer than any message could be is skipped (and never held whole in memory);
    // the chat goes on, and nothing was sent for it (the next send is still #2).
    bob.type_line(&"x".repeat(500_000));
    bob.expect("* line too long");

    alice.type_line("hi bob, how are you?");
    alice.expect("(sent #2)");
    bob.expect("alice: hi bob, how are you?");

    alice.type_line("/history 5");
    alice.expect("last 2 message(s) with bob");
    alice.expect("bob: hello alice");
    alice.expect("alice (you): hi bob, how are you?");
    alice.type_line("/friends");
    alice.expect("bob (online)");
    alice.type_line("/convs");
    alice.expect("bob (direct): ");

    alice.type_line("/quit");
    assert!(alice.proc.wait_exit().success());

    // While alice is away. Then she comes back without a password: the saved login is reused
    // and only what she missed is shown.
    bob.type_line("are you there?");
    bob.expect("(sent #3)");
    let mut alice = Chat::start("alice", addr, &state, &["--to", "bob"]);
    alice.expect("* talking to bob");
    alice.expect("* connected");
    alice.expect("bob: are you there?");
    alice.type_line("back now");
    bob.expect("alice: back now");

    let seen = alice.finish();
    assert!(
        !seen.iter().any(|l| l.contains("hello alice")),
        "replayed old messages: {seen:#?}"
    );
    // Without --to, a restart resumes the conversation the last run was in.
    let mut alice = Chat::start("alice", addr, &state, &[]);
    alice.expect("* talking in bob");
    alice.type_line("resumed");
    bob.expect("alice: resumed");
    alice.finish();
    // EOF on stdin: a piped send still goes out before the process exits.
    bob.type_line("bye");
    let seen = bob.finish();
    assert_eq!(
        seen.last().map(String::as_str),
        Some("(sent #6)"),
        "{seen:#?}"
    );
}

#[test]
fn three_terminals_share_a_group() {
    let tmp = tempfile::tempdir().unwrap();
    let (_server, addr) = start_server(&tmp.path().join("data"));
    let state = tmp.path().join("state");
    let with_password = ["--password", PASSWORD, "--register"];
    let mut bob = Chat::start("bob", addr, &state, &with_password);
    bob.expect("* connected");
    let mut carol = Chat::start("carol", addr, &state, &with_password);
    carol.expect("* connected");
    let mut alice = Chat::start("alice", addr, &state, &with_password);
    alice.expect("* connected");

    alice.type_line("/group team bob,carol");
    alice.expect("* created group team");
    alice.expect("* alice created team with bob, carol");
    // The join notice and the group's first (system) message come in either order.
    bob.expect_any_order("* you are in group team");
    bob.expect_any_order("* [team] alice created team with bob, carol");
    carol.expect_any_order("* you are in group team");
    carol.expect_any_order("* [team] alice created team with bob, carol");

    bob.type_line("/switch team");
    bob.expect("* talking in team");
    bob.type_line("hi team");
    bob.expect("(sent #2)");
    alice.expect("bob: hi team");
    // Carol is not looking at the group: the line names it.
    carol.expect("[team] bob: hi team");

    alice.type_line("/convs");
    alice.expect("* #");
    carol.type_line("/convs");
    let line = carol.expect("team (group, 3 members): ");
    assert!(
        !line.ends_with(": 0 unread"),
        "carol has not read the group: {line}"
    );

    alice.type_line("/kick carol");
    alice.expect("* alice removed carol");
    bob.expect("* alice removed carol");
    carol.expect("* you are no longer in group team");
    bob.type_line("/leave");
    bob.expect("* left team");
    alice.expect("* bob left");

    alice.finish();
    bob.finish();
    carol.finish();
}
