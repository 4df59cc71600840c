//! Arbitrary bytes as a checkpoint's `state.json`: a state whose counts are in range and
//! consistent with each other, or an error naming the field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let path = std::path::Path::new("state.json");
    if let Ok(st) = kiln::train::checkpoint::parse_state(bytes, path) {
        assert!(st.step <= st.total_steps && st.total_steps > 0);
        assert!(st.epoch.is_finite() && st.lr.is_finite());
        assert!(st.best_step.is_none_or(|b| b <= st.step));
        if let Some(spe) = st.steps_per_epoch {
            assert!(spe > 0 && st.data_group < spe);
        }
    }
});
