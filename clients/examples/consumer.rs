//! A durable consumer: creates the subscription `readings_hot` (rows with temp > 30) if
//! it does not exist, fetches and acknowledges a few rows, and exits. Run it again and it
//! carries on after the rows it acknowledged.
//!
//! ```sh
//! EDDY_URL="host=127.0.0.1 port=5433 user=eddy dbname=eddy" cargo run -p eddy-client --example consumer
//! ```

use std::time::{Duration, Instant};

use eddy_client::{Client, Message, StartFrom, SubscriptionOptions};

const DEFAULT_URL: &str = "host=127.0.0.1 port=5433 user=eddy dbname=eddy";
/// Rows to acknowledge before exiting.
const ROWS: usize = 5;

#[tokio::main]
async fn main() -> eddy_client::Result<()> {
    let url = std::env::var("EDDY_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let client = Client::connect(&url).await?;
    client
        .raw()
        .await?
        .batch_execute("CREATE TOPIC IF NOT EXISTS readings (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 4)")
        .await?;

    let options = SubscriptionOptions {
        filter: Some("temp > 30".to_owned()),
        from: Some(StartFrom::Beginning),
        ack_wait: Some(Duration::from_secs(30)),
        max_deliver: Some(5),
        ..SubscriptionOptions::default()
    };
    let consumer = client
        .consumer("readings_hot")
        .create_on("readings", options)
        .build()
        .await?;

    // Some hot readings, so there is something to consume on a fresh node.
    for i in 0..ROWS {
        client
            .publish(
                "readings",
                &Message::new()
                    .set("sensor", format!("hot{i}"))
                    .set("temp", 35.0 + i as f64),
            )
            .await?;
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut acked = 0;
    while acked < ROWS {
        if Instant::now() > deadline {
            eprintln!("acknowledged only {acked} rows within 30 s");
            std::process::exit(1);
        }
        let rows = consumer
            .fetch((ROWS - acked) as u32, Duration::from_secs(5))
            .await?;
        for row in &rows {
            let temp: Option<f64> = row.get("temp")?;
            println!(
                "partition={} offset={} temp={} delivery={}",
                row.partition(),
                row.offset(),
                temp.map_or("-".to_owned(), |t| t.to_string()),
                row.deliveries().unwrap_or(1)
            );
        }
        consumer.ack(&rows).await?;
        acked += rows.len();
    }
    println!("acked {acked} rows");
    Ok(())
}
