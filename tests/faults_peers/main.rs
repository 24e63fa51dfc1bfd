//! Faults between the services (issue 24, points 3 and 5), with the real binaries and real
//! mechanisms: slow and silent peers (a black-hole listener, SIGSTOP, a relay whose connections
//! go silent) in [`peers`], wall-clock jumps (libfaketime) in [`clock`]. Each measured
//! detection time is printed; only generous upper bounds are asserted.

mod clock;
mod peers;
mod system;
