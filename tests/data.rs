//! Dataset formats, detection and every validation reason (`file:line: field: reason`).

use std::path::PathBuf;

use kiln::KilnError;
use kiln::data::dataset::load_file;
use kiln::data::{DataSpec, Dataset, Example, Format, LoadOptions, Message, Reason, Role};

fn write(name: &str, body: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn load(name: &str, body: &str) -> Vec<Example> {
    let p = write(name, body.as_bytes());
    load_file(&p, &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}")).0
}

/// The error of the first bad row, with the default (stop on first error) options.
fn first_error(name: &str, body: &[u8]) -> kiln::data::RowError {
    let p = write(name, body);
    match load_file(&p, &LoadOptions::default()) {
        Err(KilnError::Data(e)) => {
            let s = e.to_string();
            assert!(s.starts_with(&format!("{}:{}: {}: ", p.display(), e.line, e.field)), "{s}");
            e
        }
        Err(other) => panic!("{name}: expected a row error, got {other}"),
        Ok(_) => panic!("{name}: loaded but should not"),
    }
}

fn m(role: Role, c: &str) -> Message {
    Message { role, content: c.into() }
}

#[test]
fn every_format_loads_and_normalizes() {
    let pc = load("pc.jsonl", "{\"prompt\": \"2+2?\", \"completion\": \"4\"}\n");
    assert_eq!(pc, vec![Example::PromptCompletion { prompt: "2+2?".into(), completion: "4".into() }]);
    let chat = load(
        "chat.jsonl",
        r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#,
    );
    assert_eq!(
        chat,
        vec![Example::Chat(vec![m(Role::System, "Be brief."), m(Role::User, "Hi"), m(Role::Assistant, "Hello")])]
    );
    let sg = load(
        "sg.json",
        r#"[{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]"#,
    );
    assert_eq!(sg, vec![Example::Chat(vec![m(Role::User, "Hi"), m(Role::Assistant, "Hello")])]);
    let al = load(
        "al.jsonl",
        "{\"instruction\": \"Translate\", \"input\": \"chat\", \"output\": \"cat\"}\n{\"instruction\": \"Say hi\", \"input\": \"\", \"output\": \"hi\"}\n",
    );
    assert_eq!(
        al,
        vec![
            Example::PromptCompletion { prompt: "Translate\n\nchat".into(), completion: "cat".into() },
            Example::PromptCompletion { prompt: "Say hi".into(), completion: "hi".into() },
        ]
    );
    assert_eq!(load("t.jsonl", "{\"text\": \"once upon\"}\n\n"), vec![Example::Text("once upon".into())]);
    let pref =
        load("p.jsonl", r#"{"prompt": "Q", "chosen": "good", "rejected": [{"role": "assistant", "content": "bad"}]}"#);
    assert_eq!(
        pref,
        vec![Example::Preference {
            prompt: vec![m(Role::User, "Q")],
            chosen: vec![m(Role::Assistant, "good")],
            rejected: vec![m(Role::Assistant, "bad")]
        }]
    );
    let csv = load("d.csv", "prompt,completion\n\"a, b\",c\nd,\"multi\nline\"\n");
    assert_eq!(csv.len(), 2);
    assert_eq!(csv[1], Example::PromptCompletion { prompt: "d".into(), completion: "multi\nline".into() });
}

#[test]
fn format_can_be_forced() {
    let p = write("forced.jsonl", br#"{"text": "x", "prompt": "p", "completion": "c"}"#);
    let opts = LoadOptions { format: Some(Format::Text), ..Default::default() };
    let (ex, rep) = load_file(&p, &opts).unwrap();
    assert_eq!(rep.format, Format::Text);
    assert_eq!(ex, vec![Example::Text("x".into())]);
}

#[test]
fn every_reason_is_reported_with_file_line_and_field() {
    let cases: Vec<(&str, &[u8], Reason, usize, &str)> = vec![
        ("json.jsonl", b"{\"text\": \"ok\"}\n{\"text\": \"broken\"\n", Reason::InvalidJson, 2, "(row)"),
        ("utf8.jsonl", b"{\"text\": \"ok\"}\n{\"text\": \"\xff\xfe\"}\n", Reason::NonUtf8, 2, "(row)"),
        ("notobj.jsonl", b"{\"text\": \"ok\"}\n[1, 2]\n", Reason::WrongType, 2, "(row)"),
        ("unknown.jsonl", b"{\"question\": \"?\"}\n", Reason::UnknownFormat, 1, "(row)"),
        ("missing.jsonl", b"{\"prompt\": \"p\", \"completion\": \"c\"}\n{\"prompt\": \"p\"}\n", Reason::MissingField, 2, "completion"),
        ("empty.jsonl", b"{\"text\": \"   \"}\n", Reason::EmptyField, 1, "text"),
        ("type.jsonl", b"{\"prompt\": \"p\", \"completion\": 4}\n", Reason::WrongType, 1, "completion"),
        (
            "role.jsonl",
            br#"{"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}"#,
            Reason::UnknownRole,
            1,
            "messages[1].role",
        ),
        (
            "final.jsonl",
            br#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}"#,
            Reason::NoFinalAssistant,
            1,
            "messages",
        ),
        (
            "order.jsonl",
            br#"{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}"#,
            Reason::RoleOrder,
            1,
            "messages[1]",
        ),
        (
            "sys.jsonl",
            br#"{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "c"}]}"#,
            Reason::RoleOrder,
            1,
            "messages[1]",
        ),
        ("content.jsonl", br#"{"messages": [{"role": "user"}]}"#, Reason::MissingField, 1, "messages[0].content"),
        ("sgrole.jsonl", br#"{"conversations": [{"from": "tool", "value": "x"}]}"#, Reason::UnknownRole, 1, "conversations[0].from"),
        ("pref.jsonl", br#"{"prompt": "q", "chosen": "a", "rejected": ""}"#, Reason::EmptyField, 1, "rejected"),
        ("csvrow.csv", b"text,extra\nok,1\nbad\n", Reason::InvalidCsv, 3, "(row)"),
        ("csvutf8.csv", b"text\nok\n\xff\n", Reason::NonUtf8, 3, "text"),
    ];
    for (name, body, reason, line, field) in cases {
        let e = first_error(name, body);
        assert_eq!((e.reason, e.line, e.field.as_str()), (reason, line, field), "{name}: {e}");
    }
}

#[test]
fn skip_invalid_counts_by_reason() {
    let p = write(
        "mixed.jsonl",
        b"{\"text\": \"a\"}\n{\"text\": 1}\nnot json\n{\"text\": \"\"}\n{\"text\": \"b\"}\n{\"text\": 2}\n",
    );
    let (ex, rep) = load_file(&p, &LoadOptions { skip_invalid: true, ..Default::default() }).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!((rep.rows, rep.valid), (6, 2));
    assert_eq!(rep.invalid.get(&Reason::WrongType), Some(&2));
    assert_eq!(rep.invalid.get(&Reason::InvalidJson), Some(&1));
    assert_eq!(rep.invalid.get(&Reason::EmptyField), Some(&1));
}

#[test]
fn empty_dataset_is_an_error() {
    let p = write("nothing.jsonl", b"\n\n");
    let e = Dataset::load(&[DataSpec { path: p.clone(), weight: 1.0 }], &LoadOptions::default(), 0).unwrap_err();
    assert!(e.to_string().contains("empty dataset"), "{e}");
    let p = write("allbad.jsonl", b"{\"text\": 1}\n");
    let opts = LoadOptions { skip_invalid: true, ..Default::default() };
    let e = Dataset::load(&[DataSpec { path: p, weight: 1.0 }], &opts, 0).unwrap_err();
    assert!(e.to_string().contains("all 1 rows are invalid"), "{e}");
}

#[test]
fn split_and_mix_are_seeded() {
    let body: String = (0..50).map(|i| format!("{{\"text\": \"row {i}\"}}\n")).collect();
    let a = write("a.jsonl", body.as_bytes());
    let b = write("b.jsonl", b"{\"text\": \"b1\"}\n{\"text\": \"b2\"}\n");
    let spec = |p: &PathBuf, w| DataSpec { path: p.clone(), weight: w };
    let (d, _) = Dataset::load(&[spec(&a, 1.0)], &LoadOptions::default(), 0).unwrap();
    let (tr1, te1) = d.clone().split(0.2, 7);
    let (tr2, te2) = d.clone().split(0.2, 7);
    let (_, te3) = d.split(0.2, 8);
    assert_eq!((tr1.len(), te1.len()), (40, 10));
    assert_eq!(te1.examples, te2.examples);
    assert_eq!(tr1.examples, tr2.examples);
    assert_ne!(te1.examples, te3.examples);
    // 50 + 2 rows mixed 0.5 / 0.5: each source gives 26 rows (b repeated).
    let (mix, _) = Dataset::load(&[spec(&a, 0.5), spec(&b, 0.5)], &LoadOptions::default(), 1).unwrap();
    let from_b = mix.examples.iter().filter(|e| matches!(e, Example::Text(t) if t.starts_with('b'))).count();
    assert_eq!((mix.len(), from_b), (52, 26));
    assert_eq!(DataSpec::parse("x.jsonl:0.7").unwrap(), spec(&PathBuf::from("x.jsonl"), 0.7));
    assert_eq!(DataSpec::parse("C:data.jsonl").unwrap().path, PathBuf::from("C:data.jsonl"));
    assert!(DataSpec::parse("x.jsonl:-1").is_err());
}

#[test]
fn a_line_over_the_byte_budget_is_refused_before_parsing_and_can_be_skipped() {
    let long = format!("{{\"text\": \"{}\"}}\n", "a".repeat(5000));
    let body = format!("{{\"text\": \"one\"}}\n{long}{{\"text\": \"three\"}}\n");
    let p = write("budget.jsonl", body.as_bytes());
    let opts = LoadOptions { max_line_bytes: 1000, ..Default::default() };
    match load_file(&p, &opts) {
        Err(KilnError::Data(e)) => {
            assert_eq!((e.line, e.reason), (2, Reason::TooLong));
            assert!(e.to_string().contains("1000 bytes") && e.to_string().contains("--max-seq-len"), "{e}");
        }
        other => panic!("expected a too-long row, got {:?}", other.map(|r| r.0.len())),
    }
    // Skipped, the rows around it load, numbered as in the file.
    let (ex, rep) = load_file(&p, &LoadOptions { skip_invalid: true, ..opts.clone() }).unwrap();
    assert_eq!(ex, vec![Example::Text("one".into()), Example::Text("three".into())]);
    assert_eq!(rep.invalid.get(&Reason::TooLong), Some(&1));
    // The budget scales with --max-seq-len, from a floor.
    use kiln::data::budget::{line_budget, render_budget};
    assert_eq!(line_budget(2048), 1 << 20);
    assert_eq!(line_budget(1), 16 << 10);
    assert_eq!(render_budget(2048), 128 << 10);
    assert_eq!(line_budget(usize::MAX), usize::MAX);
}

#[test]
fn a_csv_record_over_the_budget_ends_the_file_even_when_skipping() {
    // A quoted field spanning many short lines: one record, over the budget.
    let body = format!("text\none\n\"{}\"\nthree\n", "ab\n".repeat(5000));
    let p = write("budget.csv", body.as_bytes());
    let opts = LoadOptions { max_line_bytes: 1000, skip_invalid: true, ..Default::default() };
    match load_file(&p, &opts) {
        Err(KilnError::Data(e)) => {
            assert_eq!((e.line, e.reason), (3, Reason::TooLong), "{e}");
        }
        other => panic!("expected a too-long record, got {:?}", other.map(|r| r.0.len())),
    }
}

#[test]
fn binary_files_are_refused_at_once() {
    let p = write("zeros", &[0u8; 10_000]);
    let e = load_file(&p, &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("NUL byte at offset 0") && e.contains("zeros"), "{e}");
    // /dev/zero is endless: the head alone decides.
    let e = load_file(std::path::Path::new("/dev/zero"), &LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("/dev/zero") && e.contains("binary"), "{e}");
}

/// `kiln data inspect --json` of `path`, with `stdin` fed to it.
fn inspect(path: &std::path::Path, stdin: Option<Vec<u8>>) -> serde_json::Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["data", "inspect", "--json"])
        .arg(path)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        let mut w = c.stdin.take().unwrap();
        std::thread::spawn(move || w.write_all(&bytes).unwrap());
    }
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn pipes_and_fifos_are_read_once_and_lose_no_rows() {
    // Well over the 4 KiB the kind is sniffed from, with no extension to go by.
    let rows: String = (0..2000).map(|i| format!("{{\"prompt\": \"q{i}\", \"completion\": \"a{i}\"}}\n")).collect();
    let dir = write("fifo-dir-marker", b"").parent().unwrap().to_path_buf();
    let fifo = dir.join("rows-fifo");
    let _ = std::fs::remove_file(&fifo);
    let st = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let (f2, body) = (fifo.clone(), rows.clone());
    let writer = std::thread::spawn(move || std::fs::write(&f2, body).unwrap());
    let v = inspect(&fifo, None);
    writer.join().unwrap();
    assert_eq!((v["rows"].as_u64(), v["valid"].as_u64()), (Some(2000), Some(2000)), "{v}");
    assert_eq!(v["format"], "prompt-completion");
    // Standard input as a path, CSV sniffed from its first bytes.
    let csv: String = std::iter::once("prompt,completion\n".to_string())
        .chain((0..3000).map(|i| format!("question {i},answer {i}\n")))
        .collect();
    let v = inspect(std::path::Path::new("/dev/stdin"), Some(csv.into_bytes()));
    assert_eq!((v["rows"].as_u64(), v["valid"].as_u64()), (Some(3000), Some(3000)), "{v}");
}

#[test]
fn an_endless_line_is_refused_at_once_when_not_skipping() {
    // A FIFO fed `{"text": "aaaa…` without end: the error comes when the budget is passed,
    // without waiting for a newline that never comes.
    let dir = write("endless-marker", b"").parent().unwrap().to_path_buf();
    let fifo = dir.join("endless.jsonl");
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let f2 = fifo.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new().write(true).open(&f2).unwrap();
        let _ = w.write_all(b"{\"text\": \"");
        // Stops once the reader has gone (a broken pipe).
        let chunk = vec![b'a'; 1 << 16];
        while w.write_all(&chunk).is_ok() {}
    });
    let opts = LoadOptions { max_line_bytes: 100_000, ..Default::default() };
    match load_file(&fifo, &opts) {
        Err(KilnError::Data(e)) => assert_eq!((e.line, e.reason), (1, Reason::TooLong)),
        other => panic!("expected a too-long row, got {:?}", other.map(|r| r.0.len())),
    }
    writer.join().unwrap();
}

#[test]
fn a_json_array_row_over_the_budget_is_refused_too() {
    let body = format!("[{{\"text\": \"one\"}}, {{\"text\": \"{}\"}}, {{\"text\": \"three\"}}]", "b".repeat(3000));
    let p = write("budget.json", body.as_bytes());
    let opts = LoadOptions { max_line_bytes: 1000, skip_invalid: true, ..Default::default() };
    let (ex, rep) = load_file(&p, &opts).unwrap();
    assert_eq!(ex, vec![Example::Text("one".into()), Example::Text("three".into())]);
    assert_eq!(rep.invalid.get(&Reason::TooLong), Some(&1));
}
