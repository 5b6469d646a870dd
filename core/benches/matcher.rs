//! ns per whitelist lookup at 10, 10k and 1M entries; IPv4, IPv6 and mixed; hits and misses.
//! And ns per id lookup in an `in_key` set of 10, 10k and 1M user ids.
//! Seeded random data: every run measures the same lists and probes.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gray_core::idset::IdSet;
use gray_core::ipset::IpSet;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const PROBES: usize = 4096;

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
    Mixed,
}

/// One entry in ten is a network, the rest hosts, like a real gray list with a few office ranges.
fn random_net(rng: &mut fastrand::Rng, v6: bool) -> IpNet {
    let host = rng.u8(0..10) != 0;
    if v6 {
        // Global unicast 2000::/3, as client addresses are.
        let addr = Ipv6Addr::from((0x2000u128 << 112) | (rng.u128(..) >> 3));
        let prefix = if host { 128 } else { rng.u8(48..=120) };
        IpNet::V6(Ipv6Net::new(addr, prefix).unwrap().trunc())
    } else {
        let addr = Ipv4Addr::from(rng.u32(..));
        let prefix = if host { 32 } else { rng.u8(20..=30) };
        IpNet::V4(Ipv4Net::new(addr, prefix).unwrap().trunc())
    }
}

fn is_v6(rng: &mut fastrand::Rng, family: Family) -> bool {
    match family {
        Family::V4 => false,
        Family::V6 => true,
        Family::Mixed => rng.bool(),
    }
}

fn random_addr(rng: &mut fastrand::Rng, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from((0x2000u128 << 112) | (rng.u128(..) >> 3)))
    } else {
        IpAddr::V4(Ipv4Addr::from(rng.u32(..)))
    }
}

/// A list of `size` entries, addresses inside it (hits) and outside it (misses).
fn fixture(size: usize, family: Family) -> (IpSet, Vec<IpAddr>, Vec<IpAddr>) {
    let mut rng = fastrand::Rng::with_seed(0x6772_6179);
    let nets: Vec<IpNet> = (0..size)
        .map(|_| {
            let v6 = is_v6(&mut rng, family);
            random_net(&mut rng, v6)
        })
        .collect();
    let set = IpSet::new(nets.iter().copied());
    let hits = (0..PROBES)
        .map(|_| nets[rng.usize(..nets.len())].network())
        .collect();
    let mut misses = Vec::with_capacity(PROBES);
    while misses.len() < PROBES {
        let v6 = is_v6(&mut rng, family);
        let addr = random_addr(&mut rng, v6);
        if !set.contains(addr) {
            misses.push(addr);
        }
    }
    (set, hits, misses)
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(PROBES as u64));
    for (family, family_name) in [
        (Family::V4, "v4"),
        (Family::V6, "v6"),
        (Family::Mixed, "mixed"),
    ] {
        for size in [10usize, 10_000, 1_000_000] {
            let (set, hits, misses) = fixture(size, family);
            for (probes, outcome) in [(&hits, "hit"), (&misses, "miss")] {
                let id = BenchmarkId::new(format!("{family_name}/{outcome}"), size);
                group.bench_with_input(id, probes, |b, probes| {
                    b.iter(|| {
                        probes
                            .iter()
                            .filter(|&&addr| set.contains(black_box(addr)))
                            .count()
                    })
                });
            }
        }
    }
    for size in [10usize, 10_000, 1_000_000] {
        let mut rng = fastrand::Rng::with_seed(0x6964_7321);
        let ids: Vec<String> = (0..size).map(|_| format!("u{}", rng.u64(..))).collect();
        let set = IdSet::parse(ids.iter().map(|id| id.as_bytes()));
        let hits: Vec<&[u8]> = (0..PROBES)
            .map(|_| ids[rng.usize(..ids.len())].as_bytes())
            .collect();
        let misses: Vec<String> = (0..PROBES).map(|i| format!("x{i}")).collect();
        let misses: Vec<&[u8]> = misses.iter().map(|m| m.as_bytes()).collect();
        for (probes, outcome) in [(&hits, "hit"), (&misses, "miss")] {
            let id = BenchmarkId::new(format!("ids/{outcome}"), size);
            group.bench_with_input(id, probes, |b, probes| {
                b.iter(|| {
                    probes
                        .iter()
                        .filter(|&&probe| set.contains(black_box(probe)))
                        .count()
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = lookups
}
criterion_main!(benches);
