//! `hostile-snoop`: a plugin that tries to reach what the sandbox denies.
//!
//! It exists for the host's tests: Kiln gives plugins a deny-by-default WASI
//! (no files, no environment, no network). `process` tries, in order, to read
//! `/etc/passwd`, list the environment, read `HOME`, open a TCP connection to
//! `127.0.0.1:5672`, bind a UDP socket to `0.0.0.0:0` and resolve
//! `localhost:80`. It never panics: it returns `ok` with a one-line JSON
//! object, one key per attempt, each value `"ok: <detail>"` on success or
//! `"error: <message>"` on denial, e.g.
//!
//! ```text
//! {"file":"error: ...","env_count":0,"env":"error: ...","home":"error: ...","tcp":"error: ...","udp":"error: ...","dns":"error: ..."}
//! ```
//!
//! `env_count` is the number of variables seen; `env` repeats it in the
//! `ok:`/`error:` form of the other keys. Config `dns_lookups` (default 1)
//! repeats the name lookup that many times, like a guest looping on a
//! denied call; `dns` reports the last attempt.

hostile_export::export_hostile!("hostile-snoop");

use std::fmt::Display;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};

use kiln::plugin::host_api::get_config;

/// `ok: <detail>` or `error: <message>`.
fn report<T, E: Display>(attempt: Result<T, E>, detail: impl FnOnce(T) -> String) -> String {
    match attempt {
        Ok(value) => format!("ok: {}", detail(value)),
        Err(error) => format!("error: {error}"),
    }
}

/// `s` as a JSON string literal, quotes included.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn process(_input: String) -> Result<ProcessResult, ProcessError> {
    let file = report(std::fs::read_to_string("/etc/passwd"), |text| {
        text.chars().take(20).collect()
    });

    // `vars_os`, not `vars`: `vars` panics on a non-UTF-8 variable.
    let vars: Vec<_> = std::env::vars_os().collect();
    let env = match vars.first() {
        Some((key, _)) => format!("ok: {} vars, first {}", vars.len(), key.to_string_lossy()),
        None => "error: no environment variables visible".to_string(),
    };

    let home = report(std::env::var("HOME"), |home| home);

    let tcp = report(
        TcpStream::connect("127.0.0.1:5672"),
        |stream| match stream.peer_addr() {
            Ok(peer) => format!("connected to {peer}"),
            Err(_) => "connected".to_string(),
        },
    );

    let udp = report(UdpSocket::bind("0.0.0.0:0"), |socket| {
        match socket.local_addr() {
            Ok(local) => format!("bound to {local}"),
            Err(_) => "bound".to_string(),
        }
    });

    let lookups = get_config("dns_lookups")
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(1);
    let mut dns = String::new();
    for _ in 0..lookups.max(1) {
        dns = report("localhost:80".to_socket_addrs(), |mut addrs| {
            match addrs.next() {
                Some(addr) => format!("resolved to {addr}"),
                None => "resolved to no address".to_string(),
            }
        });
    }

    let output = format!(
        "{{\"file\":{},\"env_count\":{},\"env\":{},\"home\":{},\"tcp\":{},\"udp\":{},\"dns\":{}}}",
        json_string(&file),
        vars.len(),
        json_string(&env),
        json_string(&home),
        json_string(&tcp),
        json_string(&udp),
        json_string(&dns),
    );
    ok(output)
}
