//! Streams a topic from the beginning, prints the first rows and exits.
//!
//! Publishes a few rows first, so there is something to read on a fresh node.
//!
//! ```sh
//! EDDY_URL="host=127.0.0.1 port=5433 user=eddy dbname=eddy" cargo run -p eddy-client --example subscribe
//! ```

use std::time::Duration;

use eddy_client::{Client, Message};
use futures::StreamExt;

const DEFAULT_URL: &str = "host=127.0.0.1 port=5433 user=eddy dbname=eddy";
/// Rows to print before exiting.
const ROWS: usize = 10;

#[tokio::main]
async fn main() -> eddy_client::Result<()> {
    let url = std::env::var("EDDY_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let client = Client::connect(&url).await?;
    client
        .raw()
        .await?
        .batch_execute("CREATE TOPIC IF NOT EXISTS readings (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 4)")
        .await?;
    for i in 0..ROWS {
        let sensor = format!("s{i}");
        client
            .publish(
                "readings",
                &Message::new()
                    .key(sensor.clone())
                    .set("sensor", sensor)
                    .set("temp", 20.0 + i as f64),
            )
            .await?;
    }

    let mut stream = client
        .subscribe("readings")
        .from_beginning()
        .stream()
        .await?;
    let mut printed = 0;
    while printed < ROWS {
        // A bound, so the example never hangs in CI.
        let Ok(next) = tokio::time::timeout(Duration::from_secs(30), stream.next()).await else {
            eprintln!("no row within 30 s");
            std::process::exit(1);
        };
        let Some(row) = next else { break };
        let row = row?;
        let sensor: Option<String> = row.get("sensor")?;
        let temp: Option<f64> = row.get("temp")?;
        println!(
            "partition={} offset={} key={} sensor={} temp={}",
            row.partition(),
            row.offset(),
            row.key().unwrap_or("-"),
            sensor.as_deref().unwrap_or("-"),
            temp.map_or("-".to_owned(), |t| t.to_string())
        );
        printed += 1;
    }
    println!("received {printed} rows");
    Ok(())
}
