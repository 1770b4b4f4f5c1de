//! Command lines for `CreateProcess*`: Windows passes one string, and each program
//! splits it itself. Nearly every program uses the `CommandLineToArgvW` / MSVC CRT
//! rules, which [`quote_arg`] targets; `cmd.exe` has its own, handled by [`cmd_line`].
//!
//! Getting this wrong is an injection bug (the "BatBadBut" class: an argument with a
//! quote and `&` running a second command through a `.bat` file), so both directions
//! are implemented and tested against each other.

/// Why a command line cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdLineError {
    /// Empty argv.
    #[error("empty command")]
    Empty,
    /// NUL cannot be passed to a Windows program.
    #[error("argument {0} contains a NUL character, which Windows command lines cannot carry")]
    Nul(usize),
    /// The program name is parsed without escapes: a quote in it cannot be represented.
    #[error("the program name contains a double quote, which Windows cannot pass; rename or use a path without quotes")]
    QuoteInProgram,
    /// `cmd.exe` ends a command at a line break.
    #[error("argument {0} contains a line break, which cmd.exe cannot take safely; pass it in a file or environment variable instead")]
    LineBreakForCmd(usize),
    /// Over the 32767-character limit of `CreateProcess`.
    #[error("the command line is {0} characters long; Windows allows 32766. Pass long inputs through a file")]
    TooLong(usize),
}

/// Longest command line `CreateProcessW` accepts (in UTF-16 units, without the NUL).
pub const MAX_COMMAND_LINE: usize = 32766;

/// Quotes one argument so that `CommandLineToArgvW` and the MSVC CRT give it back
/// unchanged.
///
/// Backslashes are literal except in a run directly before a `"`: there `2n`
/// backslashes mean `n`, and `2n+1` mean `n` and a literal quote.
pub fn quote_arg(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '\n', '\x0b', '"']) {
        return arg.to_string();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    let mut backslashes = 0usize;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            _ => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    // Before the closing quote every backslash must be doubled.
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
    out
}

/// The program name is split differently: everything up to the next quote (when it
/// starts with one) or the next space/tab, with no escapes.
fn quote_program(p: &str) -> Result<String, CmdLineError> {
    if p.contains('"') {
        return Err(CmdLineError::QuoteInProgram);
    }
    if p.is_empty() || p.contains([' ', '\t']) {
        Ok(format!("\"{p}\""))
    } else {
        Ok(p.to_string())
    }
}

fn check_len(s: String) -> Result<String, CmdLineError> {
    let n = s.encode_utf16().count();
    if n > MAX_COMMAND_LINE {
        Err(CmdLineError::TooLong(n))
    } else {
        Ok(s)
    }
}

/// Builds the command line for a program that parses it with the CRT rules.
pub fn command_line<S: AsRef<str>>(argv: &[S]) -> Result<String, CmdLineError> {
    let (first, rest) = argv.split_first().ok_or(CmdLineError::Empty)?;
    if let Some(i) = argv.iter().position(|a| a.as_ref().contains('\0')) {
        return Err(CmdLineError::Nul(i));
    }
    let mut out = quote_program(first.as_ref())?;
    for a in rest {
        out.push(' ');
        out.push_str(&quote_arg(a.as_ref()));
    }
    check_len(out)
}

/// Characters `cmd.exe` interprets outside quotes and that a caret escapes; `"` is
/// escaped too so that cmd's own quote tracking never turns escaping off halfway
/// through an argument. `%` is not among them: a caret does not stop `%` expansion
/// (see [`PERCENT`]).
const CMD_META: &[char] = &['(', ')', '!', '^', '"', '<', '>', '&', '|'];

/// What every `%` of an argument becomes: `%` followed by `%cd:~,%`. cmd expands
/// `%...%` before it looks at carets, so `^%VAR^%` was not safe: `%PATH:a=b^%` is the
/// variable PATH with a substitution, and expands. Here the first `%` is followed
/// directly by another, an empty name, which cmd leaves alone, and `%cd:~,%` is a
/// zero-length substring of the always-defined `CD`: nothing. So no `%` of the
/// argument ever pairs with another around a variable name. This is the Rust standard
/// library's rule for batch-file arguments (it needs command extensions: `/e:on`).
const PERCENT: &str = "%%cd:~,%";

/// Escapes a CRT-quoted argument for cmd.exe: a `^` before every metacharacter, and
/// every `%` as [`PERCENT`].
pub fn cmd_escape(quoted: &str) -> String {
    let mut out = String::with_capacity(quoted.len() * 2);
    for c in quoted.chars() {
        if c == '%' {
            out.push_str(PERCENT);
            continue;
        }
        if CMD_META.contains(&c) {
            out.push('^');
        }
        out.push(c);
    }
    out
}

/// The command line to run a batch file or shell builtin through `cmd.exe`:
/// `cmd.exe /d /e:on /v:off /s /c "<escaped argv>"`.
///
/// `/d` skips the AutoRun registry commands, `/e:on` turns on the command extensions
/// that [`PERCENT`] relies on, `/v:off` turns off `!VAR!` expansion, and
/// `/s` makes cmd strip exactly the outer quotes.
pub fn cmd_line<S: AsRef<str>>(cmd_exe: &str, argv: &[S]) -> Result<String, CmdLineError> {
    if argv.is_empty() {
        return Err(CmdLineError::Empty);
    }
    let mut inner = String::new();
    for (i, a) in argv.iter().enumerate() {
        let a = a.as_ref();
        if a.contains('\0') {
            return Err(CmdLineError::Nul(i));
        }
        if a.contains(['\n', '\r']) {
            return Err(CmdLineError::LineBreakForCmd(i));
        }
        if i > 0 {
            inner.push(' ');
        }
        // The program must be quoted too: cmd splits `C:\my tools\x.bat` at the space.
        let q = if i == 0 {
            quote_program(a)?
        } else {
            quote_arg(a)
        };
        inner.push_str(&cmd_escape(&q));
    }
    check_len(format!(
        "{} /d /e:on /v:off /s /c \"{inner}\"",
        quote_program(cmd_exe)?
    ))
}

/// Whether a program must be started through `cmd.exe` (`CreateProcess` runs batch
/// files through cmd implicitly, with unsafe quoting; we do it explicitly instead).
pub fn is_batch(program: &str) -> bool {
    let lower = program.to_ascii_lowercase();
    let lower = lower.trim_end_matches(['.', ' ']);
    lower.ends_with(".bat") || lower.ends_with(".cmd")
}

/// Splits a command line like `CommandLineToArgvW` (used to test [`command_line`]).
///
/// Inside quotes, `""` gives a literal quote and ends the quoted part (the
/// `CommandLineToArgvW` behaviour; the post-2008 CRT stays quoted). [`quote_arg`] never
/// emits `""` inside quotes, so both agree on everything it produces.
pub fn split_command_line(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    let mut args = Vec::new();
    let mut i = 0;
    // Program name: no escapes.
    let mut prog = String::new();
    if chars.first() == Some(&'"') {
        i = 1;
        while i < chars.len() && chars[i] != '"' {
            prog.push(chars[i]);
            i += 1;
        }
        i += 1;
    } else {
        while i < chars.len() && chars[i] != ' ' && chars[i] != '\t' {
            prog.push(chars[i]);
            i += 1;
        }
    }
    args.push(prog);
    loop {
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let mut cur = String::new();
        let mut in_quotes = false;
        while i < chars.len() {
            let c = chars[i];
            if !in_quotes && (c == ' ' || c == '\t') {
                break;
            }
            if c == '\\' {
                let start = i;
                while i < chars.len() && chars[i] == '\\' {
                    i += 1;
                }
                let n = i - start;
                if i < chars.len() && chars[i] == '"' {
                    cur.extend(std::iter::repeat_n('\\', n / 2));
                    if n % 2 == 1 {
                        cur.push('"');
                        i += 1;
                    }
                } else {
                    cur.extend(std::iter::repeat_n('\\', n));
                }
                continue;
            }
            if c == '"' {
                if in_quotes && chars.get(i + 1) == Some(&'"') {
                    cur.push('"');
                    i += 2;
                    in_quotes = false;
                    continue;
                }
                in_quotes = !in_quotes;
                i += 1;
                continue;
            }
            cur.push(c);
            i += 1;
        }
        args.push(cur);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_table() {
        let table: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("", "\"\""),
            ("two words", "\"two words\""),
            ("tab\there", "\"tab\there\""),
            ("a\"b", "\"a\\\"b\""),
            ("\"", "\"\\\"\""),
            ("back\\slash", "back\\slash"),
            ("C:\\Program Files\\", "\"C:\\Program Files\\\\\""),
            ("ends\\\\", "ends\\\\"),
            ("sp ends\\\\", "\"sp ends\\\\\\\\\""),
            ("a\\\"b", "\"a\\\\\\\"b\""),
            ("a\\\\\"b", "\"a\\\\\\\\\\\"b\""),
            ("%PATH%", "%PATH%"),
            ("a&b", "a&b"),
            ("new\nline", "\"new\nline\""),
            ("ünï cödé", "\"ünï cödé\""),
        ];
        for (input, want) in table {
            assert_eq!(&quote_arg(input), want, "{input:?}");
        }
    }

    #[test]
    fn round_trip_hostile_arguments() {
        let hostile = [
            "",
            " ",
            "\"",
            "\"\"",
            "\\",
            "\\\\",
            "\\\"",
            "a\\\\\\\"b\\",
            "\" & calc.exe & \"",
            "\\\" & whoami",
            "x\"\"y",
            "trailing \\",
            "%USERPROFILE%\\.ssh",
            "C:\\Users\\dev\\my proj\\",
            "tab\tand\nnewline",
            "--flag=\"quoted value\"",
            "ünï\"cödé\\",
        ];
        for a in hostile {
            let line = command_line(&["C:\\Program Files\\Git\\bin\\git.exe", a, "next"]).unwrap();
            assert_eq!(
                split_command_line(&line),
                vec!["C:\\Program Files\\Git\\bin\\git.exe", a, "next"],
                "{a:?} -> {line}"
            );
        }
    }

    #[test]
    fn program_name_rules() {
        assert_eq!(command_line(&["git", "status"]).unwrap(), "git status");
        assert_eq!(
            command_line(&["C:\\my tools\\x.exe"]).unwrap(),
            "\"C:\\my tools\\x.exe\""
        );
        // A trailing backslash in the program name is not an escape there.
        assert_eq!(
            split_command_line("\"C:\\dir\\\" arg"),
            vec!["C:\\dir\\", "arg"]
        );
        assert_eq!(command_line(&["a\"b"]), Err(CmdLineError::QuoteInProgram));
        assert_eq!(command_line::<&str>(&[]), Err(CmdLineError::Empty));
        assert_eq!(command_line(&["x", "a\0"]), Err(CmdLineError::Nul(1)));
        let long = "x".repeat(MAX_COMMAND_LINE);
        assert!(matches!(
            command_line(&["p", &long]),
            Err(CmdLineError::TooLong(_))
        ));
    }

    #[test]
    fn split_matches_documented_examples() {
        // The examples of the CommandLineToArgvW / CRT documentation.
        let table: &[(&str, &[&str])] = &[
            ("p \"a b c\" d e", &["p", "a b c", "d", "e"]),
            ("p \"ab\\\"c\" \"\\\\\" d", &["p", "ab\"c", "\\", "d"]),
            ("p a\\\\\\b d\"e f\"g h", &["p", "a\\\\\\b", "de fg", "h"]),
            ("p a\\\\\\\"b c d", &["p", "a\\\"b", "c", "d"]),
            ("p a\\\\\\\\\"b c\" d e", &["p", "a\\\\b c", "d", "e"]),
            ("p \"a\"\"b\"", &["p", "a\"b"]),
            ("p   ", &["p"]),
        ];
        for (line, want) in table {
            assert_eq!(&split_command_line(line), want, "{line}");
        }
    }

    #[test]
    fn cmd_table() {
        let table: &[(&[&str], &str)] = &[
            (
                &["build.bat", "x"],
                "cmd.exe /d /e:on /v:off /s /c \"build.bat x\"",
            ),
            (
                &["build.bat", "a&calc"],
                "cmd.exe /d /e:on /v:off /s /c \"build.bat a^&calc\"",
            ),
            (
                &["build.bat", "%PATH%"],
                "cmd.exe /d /e:on /v:off /s /c \"build.bat %%cd:~,%PATH%%cd:~,%\"",
            ),
            (
                &["build.bat", "\" & calc & \""],
                "cmd.exe /d /e:on /v:off /s /c \"build.bat ^\"\\^\" ^& calc ^& \\^\"^\"\"",
            ),
            (
                &["C:\\my tools\\b.cmd", "!x!", "(y)", "a|b", "<in>", "^"],
                "cmd.exe /d /e:on /v:off /s /c \"^\"C:\\my tools\\b.cmd^\" ^!x^! ^(y^) a^|b ^<in^> ^^\"",
            ),
        ];
        for (argv, want) in table {
            assert_eq!(&cmd_line("cmd.exe", argv).unwrap(), want, "{argv:?}");
        }
        assert_eq!(
            cmd_line("cmd.exe", &["x.bat", "a\nb"]),
            Err(CmdLineError::LineBreakForCmd(1))
        );
        assert_eq!(
            cmd_line("C:\\Windows\\System32\\cmd.exe", &["x.bat"]).unwrap(),
            "C:\\Windows\\System32\\cmd.exe /d /e:on /v:off /s /c \"x.bat\""
        );
    }

    /// cmd's first phase on a `/c` line, for a hostile environment in which every
    /// variable name is defined: panics if any `%...%` would expand, other than the
    /// empty `%cd:~,%`. An empty name (`%%`) is left alone on a command line.
    fn expand_percent(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            match after.find('%') {
                None => {
                    out.push_str(&rest[i..]);
                    return out;
                }
                Some(0) => {
                    out.push('%');
                    rest = after;
                }
                Some(j) => {
                    let name = &after[..j];
                    assert_eq!(name, "cd:~,", "{s:?}: %{name}% would expand");
                    rest = &after[j + 1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// cmd's caret phase: a caret makes the next character literal.
    fn drop_carets(s: &str) -> String {
        let mut out = String::new();
        let mut it = s.chars();
        while let Some(c) = it.next() {
            if c == '^' {
                let n = it.next().unwrap();
                assert!(CMD_META.contains(&n), "{s:?}: ^{n}");
                out.push(n);
            } else {
                assert!(!CMD_META.contains(&c), "{s:?}: bare {c}");
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn cmd_escaping_leaves_no_bare_metacharacter() {
        // After cmd's percent phase and the removal of one caret before each escaped
        // character, the text is the CRT-quoted argument again: no variable expanded
        // and no metacharacter was ever unescaped.
        for a in [
            "a&b",
            "%x%",
            "\"&\"",
            "^^",
            "!a!",
            "a b",
            "(|)<>",
            "%PATH:a=b^%",
            "%PATH:~0,1%",
            "%%",
            "%",
            "100%",
            "%cd%",
            "%~dp0",
            "a%b%c%d",
            "^%PATH^%",
            "%=C:%",
            "\"%PATH%\" & calc",
        ] {
            let q = quote_arg(a);
            let e = cmd_escape(&q);
            assert_eq!(drop_carets(&expand_percent(&e)), q, "{a:?}");
        }
    }

    #[test]
    fn batch_detection() {
        assert!(is_batch("C:\\x\\build.BAT"));
        assert!(is_batch("run.cmd"));
        assert!(is_batch("run.cmd. ."));
        assert!(!is_batch("run.exe"));
        assert!(!is_batch("cmd"));
    }
}
