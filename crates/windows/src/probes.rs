//! Safe actions for `workfence selftest` (the facade has no Win32 bindings of its own):
//! what a command would try inside the sandbox, and what the host reads from outside
//! to judge it. They exist on every OS so that the facade compiles everywhere; off
//! Windows each one says it is Windows only. No run uses them.

/// Why an action is not available here.
pub const WINDOWS_ONLY: &str = "Windows only";

/// ICMPv4 echo requests this host has sent so far (system-wide `GetIcmpStatistics`),
/// read from outside before and after a sandboxed `ping`.
pub fn icmp_echo_requests_sent() -> Option<u64> {
    #[cfg(windows)]
    {
        crate::win::sys::icmp_echo_requests_sent()
    }
    #[cfg(not(windows))]
    {
        None
    }
}

/// The tick of this session's last input event (`GetLastInputInfo`), read from
/// outside before and after a sandboxed attempt to inject input.
pub fn last_input_tick() -> Option<u32> {
    #[cfg(windows)]
    {
        crate::win::sys::last_input_tick()
    }
    #[cfg(not(windows))]
    {
        None
    }
}

/// From inside: open `WinSta0\Default` with hook and journal rights and inject a
/// one-pixel mouse move and back (`SendInput`). `Ok` says what succeeded.
pub fn inject_input_on_user_desktop() -> Result<String, String> {
    #[cfg(windows)]
    {
        crate::win::sys::inject_input_on_user_desktop()
    }
    #[cfg(not(windows))]
    {
        Err(WINDOWS_ONLY.into())
    }
}

/// From inside: open process `pid` for code injection and termination, then terminate
/// it with `code` (the host sees the victim end).
pub fn open_and_terminate(pid: u32, code: u32) -> Result<(), String> {
    #[cfg(windows)]
    {
        crate::win::sys::open_and_terminate(pid, code)
    }
    #[cfg(not(windows))]
    {
        let _ = (pid, code);
        Err(WINDOWS_ONLY.into())
    }
}

/// Serves the named pipe `name` (`\\.\pipe\...`), created with the default security
/// descriptor as programs in the sandbox create theirs, until a client connects
/// (`Ok(true)`) or `timeout` passes (`Ok(false)`). `ready` runs once the pipe exists.
pub fn serve_default_pipe(
    name: &str,
    timeout: std::time::Duration,
    ready: impl FnOnce(),
) -> Result<bool, String> {
    #[cfg(windows)]
    {
        let server = crate::win::sys::default_pipe_server(name).map_err(|e| e.to_string())?;
        ready();
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if crate::win::sys::pipe_poll_client(&server).map_err(|e| e.to_string())? {
                return Ok(true);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(false)
    }
    #[cfg(not(windows))]
    {
        let _ = (name, timeout, ready);
        Err(WINDOWS_ONLY.into())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(not(windows))]
    #[test]
    fn off_windows_every_probe_says_so() {
        use super::*;
        assert_eq!(icmp_echo_requests_sent(), None);
        assert_eq!(last_input_tick(), None);
        assert_eq!(inject_input_on_user_desktop().unwrap_err(), WINDOWS_ONLY);
        assert_eq!(open_and_terminate(1, 2).unwrap_err(), WINDOWS_ONLY);
        let mut ran = false;
        assert!(serve_default_pipe("x", std::time::Duration::ZERO, || ran = true).is_err());
        assert!(!ran);
    }
}
