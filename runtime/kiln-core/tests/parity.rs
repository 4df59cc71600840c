//! The op parity table (`kiln_core::selftest`) on the CPU backend: its f32 kernels against its
//! own f64 path. GPU backends run the same table from their own crates' tests.

#[test]
fn parity_table() {
    let be = kiln_core::CpuBackend;
    let rep = kiln_core::selftest::run(&be, &mut |_, _| {});
    for (n, why) in &rep.skipped {
        eprintln!("SKIP {n}: {why}");
    }
    assert!(rep.failed.is_empty(), "{:#?}", rep.failed);
    eprintln!("parity cpu: {} cases passed, {} skipped", rep.passed.len(), rep.skipped.len());
    assert!(!rep.passed.is_empty());
}
