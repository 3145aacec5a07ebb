//! NCCL through `lumen_backend::cuda::nccl` on the GPU machine (skipped, with a message, without
//! a GPU): on one GPU, a one-rank communicator's all-reduce leaves the values as they were and its
//! all-gather copies them, queued directly and replayed from a captured CUDA graph; on a machine
//! with two GPUs or more, two ranks on their own threads sum and gather each other's values, also
//! from graphs captured on both threads at once.

use lumen_backend::cuda::nccl::{nccl_present, Communicator};
use lumen_backend::cuda::{to_bf16, DType, Gpu};
use lumen_test_support::gpu::{device_or_skip, skip};
use std::sync::Arc;

const N: usize = 4099;

/// Rank `rank`'s value at `i`: small multiples of 1/2, exact in bf16 and in their sums.
fn value(rank: usize, i: usize) -> f32 {
    (i % 13) as f32 * 0.5 + rank as f32 * 4.0
}

fn bf16_values(rank: usize) -> Vec<u16> {
    (0..N).map(|i| to_bf16(value(rank, i))).collect()
}

fn download_bf16(gpu: &Gpu, ptr: u64) -> Vec<f32> {
    let mut bits = vec![0u16; N];
    gpu.download(&mut bits, ptr).unwrap();
    bits.into_iter().map(|b| half::bf16::from_bits(b).to_f32()).collect()
}

/// The GPU and NCCL, or `None` after saying why the test cannot run.
fn gpu_and_nccl() -> Option<Arc<Gpu>> {
    let gpu = device_or_skip(Gpu::open(0))?;
    if !nccl_present() {
        skip("NCCL could not be loaded (libnccl.so on LD_LIBRARY_PATH; scripts/gpu_tests.sh links the wheel's)");
        return None;
    }
    Some(gpu)
}

#[test]
fn one_rank_all_reduce_and_all_gather_keep_the_values_directly_and_from_a_graph() {
    let Some(gpu) = gpu_and_nccl() else { return };
    eprintln!("NCCL {}", Communicator::version().unwrap());
    let comm = Communicator::for_devices(&[0]).unwrap().remove(0);
    assert_eq!((comm.rank, comm.ranks), (0, 1));
    let want: Vec<f32> = (0..N).map(|i| value(0, i)).collect();
    let buf = gpu.upload(&bf16_values(0), "values").unwrap();
    comm.all_reduce_sum(&gpu, buf.ptr, N, DType::Bf16).unwrap();
    assert_eq!(download_bf16(&gpu, buf.ptr), want, "one rank's sum is its own values");
    let floats: Vec<f32> = want.clone();
    let send = gpu.upload(&floats, "f32 values").unwrap();
    let recv = gpu.alloc(N * 4, "gathered").unwrap();
    comm.all_gather(&gpu, send.ptr, recv.ptr, N, DType::F32).unwrap();
    let mut gathered = vec![0f32; N];
    gpu.download(&mut gathered, recv.ptr).unwrap();
    assert_eq!(gathered, want);

    gpu.begin_capture().unwrap();
    comm.all_reduce_sum(&gpu, buf.ptr, N, DType::Bf16).unwrap();
    let graph = gpu.end_capture().unwrap();
    for _ in 0..3 {
        gpu.launch_graph(&graph).unwrap();
    }
    assert_eq!(download_bf16(&gpu, buf.ptr), want, "replayed from a graph");
}

#[test]
fn two_ranks_sum_and_gather_across_gpus_on_their_own_threads() {
    let Some(_) = gpu_and_nccl() else { return };
    let count = Gpu::count();
    if count < 2 {
        eprintln!("two ranks need two GPUs; this machine has {count}: only the one-rank test applies");
        return;
    }
    let comms = Communicator::for_devices(&[0, 1]).unwrap();
    let sum: Vec<f32> = (0..N).map(|i| value(0, i) + value(1, i)).collect();
    let gathered_want: Vec<f32> = (0..2).flat_map(|r| (0..N).map(move |i| value(r, i))).collect();
    std::thread::scope(|s| {
        for comm in comms {
            let (sum, gathered_want) = (&sum, &gathered_want);
            s.spawn(move || {
                let r = comm.rank;
                let gpu = Gpu::open(r).unwrap();
                gpu.bind().unwrap();
                let buf = gpu.upload(&bf16_values(r), "values").unwrap();
                comm.all_reduce_sum(&gpu, buf.ptr, N, DType::Bf16).unwrap();
                assert_eq!(&download_bf16(&gpu, buf.ptr), sum, "rank {r}: the sum of both ranks");
                let floats: Vec<f32> = (0..N).map(|i| value(r, i)).collect();
                let send = gpu.upload(&floats, "f32 values").unwrap();
                let recv = gpu.alloc(2 * N * 4, "gathered").unwrap();
                comm.all_gather(&gpu, send.ptr, recv.ptr, N, DType::F32).unwrap();
                let mut gathered = vec![0f32; 2 * N];
                gpu.download(&mut gathered, recv.ptr).unwrap();
                assert_eq!(&gathered, gathered_want, "rank {r}: rank 0's values, then rank 1's");

                // Captured on both threads at once, then replayed on fresh values.
                gpu.begin_capture().unwrap();
                comm.all_reduce_sum(&gpu, buf.ptr, N, DType::Bf16).unwrap();
                let graph = gpu.end_capture().unwrap();
                gpu.copy_to_device(buf.ptr, &bf16_values(r)).unwrap();
                gpu.launch_graph(&graph).unwrap();
                assert_eq!(&download_bf16(&gpu, buf.ptr), sum, "rank {r}: replayed from a graph");
            });
        }
    });
}
