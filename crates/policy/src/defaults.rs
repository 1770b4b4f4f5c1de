//! Built-in defaults: the secret list, the protected names and the limits.

/// Default cap on processes inside the sandbox.
pub const MAX_PROCESSES: u32 = 4096;

/// Default size of the private /tmp: 1 GiB.
pub const TMP_BYTES: u64 = 1 << 30;

/// The core of the secret list, relative to the home directory (`~/`); the last
/// component may hold `*` wildcards. The policy hides the whole table of
/// [`crate::secrets`] (`secrets.toml`, with a documentation source per entry),
/// which contains every entry here (a unit test checks it).
pub const DENY_READ: &[&str] = &[
    "~/.ssh",
    "~/.gnupg",
    "~/.aws",
    "~/.azure",
    "~/.config/gcloud",
    "~/.config/gh",
    "~/.config/hub",
    "~/.kube",
    "~/.docker/config.json",
    "~/.netrc",
    "~/.git-credentials",
    "~/.config/git/credentials",
    "~/.npmrc",
    "~/.yarnrc.yml",
    "~/.pypirc",
    "~/.cargo/credentials*",
    "~/.gem/credentials",
    "~/.m2/settings-security.xml",
    "~/.password-store",
    "~/.local/share/keyrings",
    "~/.terraform.d/credentials.tfrc.json",
    "~/.config/op",
    "~/.vault-token",
    "~/.pgpass",
    "~/.my.cnf",
    // Coding agents' own credentials and config (config can also widen the agent's rights).
    "~/.codex",
    "~/.claude",
    "~/.claude.json",
    "~/.config/claude",
    "~/.gemini",
    "~/.aider*",
    "~/.config/github-copilot",
    "~/.cursor",
    "~/.continue",
    "~/.config/workfence/credentials*",
];

/// Names protected inside every writable root: they run code later on the host
/// (git hooks and config; agent and editor config that auto-runs tasks).
/// They are read-only when present and cannot be created when missing.
pub const PROTECTED_NAMES: &[&str] = &[
    ".git",
    ".workfence",
    ".codex",
    ".claude",
    ".agents",
    ".vscode",
    ".idea",
    ".mcp.json",
];

/// Environment variable names removed by default (exact, case-sensitive).
pub const ENV_DENY_EXACT: &[&str] = &[
    // Socket and helper pointers: a way out to host daemons.
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "SSH_ASKPASS",
    "GIT_ASKPASS",
    "SUDO_ASKPASS",
    "GPG_AGENT_INFO",
    "DBUS_SESSION_BUS_ADDRESS",
    "DBUS_SYSTEM_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "WAYLAND_DISPLAY",
    "DISPLAY",
    "XAUTHORITY",
    "DOCKER_HOST",
    "CONTAINER_HOST",
    "PODMAN_HOST",
    "PULSE_SERVER",
    "TMUX",
    "TMUX_PANE",
    "STY",
    "KITTY_LISTEN_ON",
    "VSCODE_IPC_HOOK",
    "VSCODE_IPC_HOOK_CLI",
    "VSCODE_GIT_IPC_HANDLE",
    "VSCODE_GIT_ASKPASS_MAIN",
    "VSCODE_GIT_ASKPASS_NODE",
    "KRB5CCNAME",
    "ATUIN_SESSION",
    // Credentials that do not match the patterns below.
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "DATABASE_URL",
    "REDIS_URL",
    "MONGODB_URI",
    "SENTRY_DSN",
    "HF_HOME_TOKEN",
];

/// Substrings (matched case-insensitively) that mark a variable name as a secret.
pub const ENV_DENY_SUBSTRINGS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "CREDENTIAL",
    "API_KEY",
    "APIKEY",
    "PRIVATE_KEY",
    "ACCESS_KEY",
    "SESSION_KEY",
    "AUTH_KEY",
    "CLIENT_SECRET",
    "COOKIE",
];

/// Suffixes (case-insensitive) that mark a variable name as a secret.
pub const ENV_DENY_SUFFIXES: &[&str] = &["_KEY", "_PASS", "_PWD", "_AUTH", "_DSN", "_PAT"];

/// Names that match a pattern above but are not secrets and programs need.
pub const ENV_ALLOW_EXACT: &[&str] = &["PWD", "OLDPWD", "GPG_TTY", "SSH_TTY", "TERM_SESSION_ID"];
