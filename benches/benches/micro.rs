//! Criterion micro-benchmarks of eddy's hot paths:
//! - `keys`: order-preserving key encoding (log keys, primary-key row keys);
//! - `rows`: the stored record and row codecs (encode and decode);
//! - `append`: a storage append through the committer to RocksDB, fsync included;
//! - `pgwire`: Arrow record batches to pgwire DataRows (text and binary) and COPY text.
//!
//! Run: `cargo bench -p eddy-bench --bench micro` (add a filter such as `-- rows`).

#![allow(clippy::unwrap_used)] // a benchmark fails loudly on setup errors

use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use eddy_query::{CopyFormat, CopyOptions};
use eddy_storage::layout::{decode_entry, log_key, row_key};
use eddy_storage::{
    decode_row, encode_row, ColumnDef, ColumnType, Lane, ObjectDef, Records, StorageConfig, Store,
    TopicDef, Value, WriteOp, WriteResult, WriterId,
};
use pgwire::api::portal::Format;

fn payload() -> String {
    "x".repeat(100)
}

fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("keys");
    g.bench_function("log_key", |b| {
        let mut offset = 0u64;
        b.iter(|| {
            offset += 1;
            log_key(7, 3, std::hint::black_box(offset))
        })
    });
    let pk = [Value::Int64(42), Value::Text("customer-0042".into())];
    g.bench_function("row_key_int_text", |b| {
        b.iter(|| row_key(7, &[&pk[0], &pk[1]]).unwrap())
    });
    g.finish();
}

fn rows(c: &mut Criterion) {
    let mut g = c.benchmark_group("rows");
    g.throughput(Throughput::Elements(1));
    let values = vec![
        Value::Text(payload()),
        Value::Int64(1234),
        Value::Timestamp(1_700_000_000_000_000),
    ];
    let types = [ColumnType::Text, ColumnType::Int64, ColumnType::Timestamp];
    let columns: Vec<ColumnDef> = ["payload", "n", "at"]
        .iter()
        .zip(types)
        .map(|(name, ty)| ColumnDef {
            name: (*name).into(),
            ty,
            nullable: true,
        })
        .collect();
    // One message checked and encoded into a log entry, as a session does before appending.
    g.bench_function("encode_record", |b| {
        b.iter(|| {
            let mut records = Records::new();
            records
                .push(&columns, Some("key-1"), std::hint::black_box(&values))
                .unwrap()
        })
    });
    let mut records = Records::new();
    records.push(&columns, Some("key-1"), &values).unwrap();
    let (_, entry) = records.seal(1_700_000_000_000_000).next().unwrap();
    g.bench_function("decode_record", |b| {
        b.iter(|| decode_entry(&types, std::hint::black_box(&entry)).unwrap())
    });
    g.bench_function("encode_row", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            encode_row(std::hint::black_box(&values), &mut out);
            out.len()
        })
    });
    let mut row = Vec::new();
    encode_row(&values, &mut row);
    g.bench_function("decode_row", |b| {
        b.iter(|| decode_row(&types, std::hint::black_box(&row)).unwrap())
    });
    g.finish();
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StorageConfig::default()).unwrap();
    let def = ObjectDef::Topic(topic_def());
    let topic = match rt
        .block_on(store.write(vec![WriteOp::Create(def)]))
        .unwrap()
        .remove(0)
    {
        WriteResult::Created(d) => d.id(),
        other => panic!("unexpected {other:?}"),
    };
    let lane = Lane::Alone(WriterId::Session(1));
    let mut g = c.benchmark_group("append");
    for n in [1usize, 100] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}_records_fsync"), |b| {
            b.iter_batched(
                || {
                    let mut records = Records::new();
                    for _ in 0..n {
                        records
                            .push(&topic_def().columns, None, &[Value::Text(payload())])
                            .unwrap();
                    }
                    vec![WriteOp::Append {
                        topic,
                        partition: 0,
                        records,
                    }]
                },
                // One writer waiting for each commit, as a connection does.
                |ops| rt.block_on(store.write_in(lane, ops)).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
    store.shutdown().unwrap();
}

/// The topic both the append and the encoding benchmarks use: one text column.
fn topic_def() -> TopicDef {
    TopicDef::new(
        "micro",
        vec![ColumnDef::new("payload", ColumnType::Text, true)],
    )
}

/// A batch shaped like the topic as a table: partition, offset, timestamp, key (NULL),
/// payload.
fn topic_batch(rows: usize) -> RecordBatch {
    let n = rows as i64;
    RecordBatch::try_new(
        eddy_query::topic_schema(&topic_def()),
        vec![
            Arc::new(Int32Array::from(vec![0; rows])),
            Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())),
            Arc::new(TimestampMicrosecondArray::from(
                (0..n)
                    .map(|i| 1_700_000_000_000_000 + i)
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(vec![None::<String>; rows])),
            Arc::new(StringArray::from(vec![payload(); rows])),
        ],
    )
    .unwrap()
}

fn pgwire_encoding(c: &mut Criterion) {
    let batch = topic_batch(1000);
    let mut g = c.benchmark_group("pgwire");
    g.throughput(Throughput::Elements(1000));
    for (name, format) in [
        ("datarow_text", Format::UnifiedText),
        ("datarow_binary", Format::UnifiedBinary),
    ] {
        let fields = Arc::new(
            arrow_pg::datatypes::arrow_schema_to_pg_fields(batch.schema_ref(), &format, None)
                .unwrap(),
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                arrow_pg::datatypes::encode_recordbatch(fields.clone(), batch.clone())
                    .filter(Result::is_ok)
                    .count()
            })
        });
    }
    let copy = CopyOptions {
        format: CopyFormat::Text,
        delimiter: '\t',
        null: "\\N".into(),
        header: false,
        quote: '"',
        escape: '"',
    };
    g.bench_function("copy_text", |b| {
        b.iter(|| copy.encode_batch(&batch).unwrap().len())
    });
    g.finish();
}

criterion_group!(benches, keys, rows, append, pgwire_encoding);
criterion_main!(benches);
