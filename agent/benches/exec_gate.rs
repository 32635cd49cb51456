//! The exec gate bench is being written (see docs/exec-gate.md); this placeholder measures nothing.
fn main() {
    eprintln!("exec_gate bench: not written yet; it measures nothing");
}
