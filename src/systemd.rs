//! What hookrelay says to, and takes from, systemd: the `sd_notify`
//! protocol (`READY=1`, `STATUS=`, `WATCHDOG=1`, `RELOADING=1`,
//! `STOPPING=1` as datagrams to `$NOTIFY_SOCKET`) and listeners passed by
//! socket activation (`LISTEN_FDS`). Everything here is a no-op when the
//! variables are unset, i.e. when not started by systemd.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `sd_notify` messages; silent when `$NOTIFY_SOCKET` is unset.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`: a path, or `@name` for the abstract namespace.
    /// A variable that is set but unusable is logged: systemd would
    /// otherwise wait for a READY=1 that never comes, in silence.
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Notifier::disabled() };
        let socket = path
            .to_str()
            .ok_or_else(|| std::io::Error::other("not UTF-8"))
            .and_then(notify_address)
            .and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
        match socket {
            Ok(socket) => Notifier { socket: Some(socket) },
            Err(err) => {
                tracing::error!(notify_socket = ?path, error = %err, "NOTIFY_SOCKET is set but unusable; systemd will not hear READY=1");
                Notifier::disabled()
            }
        }
    }

    pub fn disabled() -> Notifier {
        Notifier { socket: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one message (`KEY=value` lines). Failures are logged, never
    /// fatal: systemd going away must not take the gateway with it.
    pub fn notify(&self, message: &str) {
        let Some((socket, addr)) = &self.socket else { return };
        if let Err(err) = socket.send_to_addr(message.as_bytes(), addr) {
            tracing::warn!(error = %err, "cannot notify systemd");
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={status}"));
    }

    /// (`Type=notify` with `ExecReload=kill -HUP`: systemd needs no
    /// `MONOTONIC_USEC`, which only `Type=notify-reload` requires.)
    pub fn reloading(&self) {
        self.notify("RELOADING=1\nSTATUS=reloading the configuration");
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=draining and flushing the journal");
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

fn notify_address(path: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
        }
        None => std::os::unix::net::SocketAddr::from_pathname(path),
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when the
/// watchdog is on and meant for this process (`$WATCHDOG_PID`, if set).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|usec| *usec > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// Listeners passed by systemd socket activation: the first is the inbound
/// listener, a second (if any) the admin listener, in the order the
/// `.socket` unit lists them. Both `None` when not socket-activated.
pub fn inherited_listeners() -> std::io::Result<(Option<std::net::TcpListener>, Option<std::net::TcpListener>)>
{
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok((None, None));
    }
    let inbound = fds.take_tcp_listener(0)?;
    let admin = if fds.len() > 1 { fds.take_tcp_listener(1)? } else { None };
    for listener in [&inbound, &admin].into_iter().flatten() {
        listener.set_nonblocking(true)?;
    }
    Ok((inbound, admin))
}

/// The `STATUS=` line: what an operator sees in `systemctl status`.
pub fn status_line(accepted: u64, pending: u64, dead: u64) -> String {
    format!("{accepted} deliveries accepted since start, {pending} jobs pending, {dead} dead")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_and_only_for_this_process() {
        assert_eq!(watchdog_interval_from(Some("10000000"), None, 7), Some(Duration::from_secs(5)));
        assert_eq!(watchdog_interval_from(Some("10000000"), Some("7"), 7), Some(Duration::from_secs(5)));
        assert_eq!(watchdog_interval_from(Some("10000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
    }

    #[test]
    fn notifies_a_datagram_socket_and_is_silent_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), notify_address(path.to_str().unwrap()).unwrap())),
        };
        notifier.ready("up");
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
        Notifier::disabled().ready("nobody hears this");
        assert!(!Notifier::disabled().is_enabled());
    }

    #[test]
    fn abstract_addresses_are_accepted() {
        assert!(notify_address("@hookrelay-test").is_ok());
    }
}
