//! Code shared by the benches and `examples/demo.rs`: workloads, the mutex baseline, the
//! implementations under test and a counting allocator.
#![allow(dead_code)] // each target uses a part

pub mod alloc;
pub mod baseline;
pub mod impls;
pub mod workload;
