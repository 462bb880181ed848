//! A small sqllogictest-style runner that sends every record through the real wire
//! protocol (simple query) and compares the text results.
//!
//! Records, separated by blank lines (`#` starts a comment line):
//! ```text
//! statement ok
//! CREATE TOPIC t
//!
//! statement error 42P01
//! SELECT * FROM nope
//!
//! query [rowsort]
//! SELECT a, b FROM t
//! ----
//! 1 x
//! 2 NULL
//! ```
//! Values are printed as psql's text form, `NULL` for NULL, joined by one space.

use tokio_postgres::{Client, SimpleQueryMessage};

#[derive(Debug)]
enum Expect {
    Ok,
    Error(String),
    Rows { rows: Vec<String>, sort: bool },
}

#[derive(Debug)]
struct Record {
    line: usize,
    sql: String,
    expect: Expect,
}

fn parse(text: &str) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_end();
        if l.is_empty() || l.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i + 1;
        let header: Vec<&str> = l.split_whitespace().collect();
        i += 1;
        let mut sql = Vec::new();
        while i < lines.len() && !lines[i].trim().is_empty() && lines[i].trim() != "----" {
            sql.push(lines[i]);
            i += 1;
        }
        let expect = match header.as_slice() {
            ["statement", "ok"] => Expect::Ok,
            ["statement", "error", code] => Expect::Error((*code).to_owned()),
            ["query", rest @ ..] => {
                anyhow::ensure!(
                    i < lines.len() && lines[i].trim() == "----",
                    "line {start}: query without ----"
                );
                i += 1;
                let mut rows = Vec::new();
                while i < lines.len() && !lines[i].trim().is_empty() {
                    rows.push(lines[i].trim_end().to_owned());
                    i += 1;
                }
                Expect::Rows {
                    rows,
                    sort: rest.contains(&"rowsort"),
                }
            }
            _ => anyhow::bail!("line {start}: unknown record {l:?}"),
        };
        records.push(Record {
            line: start,
            sql: sql.join("\n"),
            expect,
        });
    }
    Ok(records)
}

async fn rows_of(client: &Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            let vals: Vec<String> = (0..r.len())
                .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                .collect();
            out.push(vals.join(" "));
        }
    }
    Ok(out)
}

/// Runs a golden file; returns how many records passed, or the first mismatch.
pub async fn run(client: &Client, name: &str, text: &str) -> anyhow::Result<usize> {
    let records = parse(text)?;
    for r in &records {
        let at = format!("{name}:{}", r.line);
        let result = rows_of(client, &r.sql).await;
        match (&r.expect, result) {
            (Expect::Ok, Ok(_)) => {}
            (Expect::Ok, Err(e)) => anyhow::bail!("{at}: expected ok, got error: {e:?}\n{}", r.sql),
            (Expect::Error(code), Err(e)) => {
                let got = e
                    .code()
                    .map(|c| c.code().to_owned())
                    .unwrap_or_else(|| format!("{e}"));
                anyhow::ensure!(
                    &got == code,
                    "{at}: expected SQLSTATE {code}, got {got} ({e:?})\n{}",
                    r.sql
                );
            }
            (Expect::Error(code), Ok(_)) => anyhow::bail!(
                "{at}: expected error {code}, statement succeeded\n{}",
                r.sql
            ),
            (Expect::Rows { rows, sort }, Ok(mut got)) => {
                let mut want = rows.clone();
                if *sort {
                    got.sort();
                    want.sort();
                }
                anyhow::ensure!(
                    got == want,
                    "{at}: result differs\n{}\n--- expected\n{}\n--- got\n{}",
                    r.sql,
                    want.join("\n"),
                    got.join("\n")
                );
            }
            (Expect::Rows { .. }, Err(e)) => {
                anyhow::bail!("{at}: expected rows, got error: {e:?}\n{}", r.sql)
            }
        }
    }
    Ok(records.len())
}
