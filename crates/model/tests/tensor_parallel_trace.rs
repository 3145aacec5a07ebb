//! What a tensor-parallel forward pass leaves in the recorder: one thread per rank, named after
//! it, each recording its collectives with their bytes; and a pass before any KV store is an
//! error, not a hang. (A process of its own: the recorder is the process's.)

use lumen_backend::AttentionSeq;
use lumen_model::tensor_parallel::TensorParallel;
use lumen_model::{load_model, Executor, ForwardBatch};
use lumen_trace::instrument;

#[test]
fn each_rank_thread_records_its_collectives_with_their_bytes() {
    let model = load_model("tiny").unwrap();
    let Executor::Cpu(decoder) = &model.executor else { unreachable!("loaded on the CPU") };
    let c = &decoder.config;
    let tp = TensorParallel::shard(decoder, 2).unwrap();
    let (tokens, positions, slots) = (vec![3u32, 9, 27, 81, 243], vec![0, 1, 2, 3, 4], vec![0, 1, 2, 3, 4]);
    let table = [0u32, 1];
    let seqs = [AttentionSeq { start: 0, len: 5, first_pos: 0, block_table: &table }];
    let rows = [4usize];
    let batch = ForwardBatch { tokens: &tokens, positions: &positions, slots: &slots, seqs: &seqs, logit_rows: &rows };
    let refused = tp.forward(&batch).expect_err("no KV store yet");
    assert!(refused.to_string().contains("allocate_kv"), "{refused:#}");

    tp.allocate_kv(2, 4, false).unwrap();
    instrument::configure(true, false, false, false);
    instrument::start_recording();
    let logits = tp.forward(&batch).unwrap();
    instrument::stop_recording();
    assert_eq!(logits.len(), c.vocab_size);
    let recorded = instrument::drain();
    for rank in 0..2 {
        let name = format!("tp rank {rank}");
        let tid = recorded.threads.iter().find(|(_, n)| *n == name).unwrap_or_else(|| panic!("no thread {name}: {:?}", recorded.threads)).0;
        let spans: Vec<_> = recorded.spans.iter().filter(|s| s.tid == tid).collect();
        let reduces: Vec<_> = spans.iter().filter(|s| s.name == "all_reduce").collect();
        // The embedding's, then two per layer (after attention, after the MLP).
        assert_eq!(reduces.len(), 1 + 2 * c.num_layers, "{name}");
        let bytes = 5 * c.hidden_size * 4;
        assert!(reduces.iter().all(|s| s.args.as_deref() == Some(&*format!("{{\"bytes\":{bytes},\"ranks\":2}}"))), "{reduces:?}");
        let gathers: Vec<_> = spans.iter().filter(|s| s.name == "all_gather").collect();
        assert_eq!(gathers.len(), 1, "{name}: the logits");
        assert_eq!(gathers[0].args.as_deref(), Some(&*format!("{{\"bytes\":{},\"ranks\":2}}", c.vocab_size * 4)));
    }
}
