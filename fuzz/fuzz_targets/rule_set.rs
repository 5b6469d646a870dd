//! Any bytes as a rule set: the decoder never panics, and a rule set it accepts evaluates without
//! panicking for requests built from the same bytes, always to a target of the table.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use gray_core::rules::{schema, KeyData, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let targets: Vec<String> = ["@prod1", "@prod2-grey", "@canary-b"].map(String::from).to_vec();
    let Ok(rules) = schema::compile(data, &targets) else {
        return;
    };
    let keys: Vec<Option<KeyData>> = rules.keys.iter().map(|_| None).collect();
    // Inputs: slices of the data itself, some absent, some empty.
    let inputs: Vec<Option<&[u8]>> = (0..rules.inputs.len())
        .map(|i| match i % 3 {
            0 => None,
            1 => Some(&data[..data.len().min(i * 7)]),
            _ => Some(&data[data.len() / (i + 1)..]),
        })
        .collect();
    let clients = [
        None,
        Some(IpAddr::V4(Ipv4Addr::new(10, 20, 1, 1))),
        Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for client in clients {
        for now in [0.0, 1.8e9, f64::MAX] {
            let request = Request { client, inputs: &inputs, now };
            let decision = rules.evaluate(&request, &keys[..], &mut ());
            assert!(decision.target < targets.len());
        }
    }
});
