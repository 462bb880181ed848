//! Publishes one row with `Client::publish`, then 1,000 rows through a batching
//! `Producer`, and prints where they landed.
//!
//! ```sh
//! EDDY_URL="host=127.0.0.1 port=5433 user=eddy dbname=eddy" cargo run -p eddy-client --example publish
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use eddy_client::{Client, Message, Value};

const DEFAULT_URL: &str = "host=127.0.0.1 port=5433 user=eddy dbname=eddy";

#[tokio::main]
async fn main() -> eddy_client::Result<()> {
    let url = std::env::var("EDDY_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let client = Client::connect(&url).await?;
    client
        .raw()
        .await?
        .batch_execute("CREATE TOPIC IF NOT EXISTS readings (sensor TEXT, temp DOUBLE PRECISION) WITH (partitions = 4)")
        .await?;

    let at = client
        .publish(
            "readings",
            &Message::new()
                .key("s1")
                .set("sensor", "s1")
                .set("temp", 21.5),
        )
        .await?;
    println!(
        "published s1 at partition {} offset {}",
        at.partition, at.offset
    );

    let producer = client
        .producer("readings", &["sensor", "temp"])
        .batch_size(500)
        .linger(Duration::from_millis(5))
        .max_in_flight(4)
        .build()
        .await?;
    let sends = (0..1000).map(|i| {
        let sensor = format!("s{}", i % 10);
        let values: Vec<Value> = vec![Box::new(sensor.clone()), Box::new(15.0 + f64::from(i % 30))];
        let producer = &producer;
        async move { producer.send(Some(&sensor), values).await }
    });
    let mut positions = BTreeSet::new();
    for ack in futures::future::join_all(sends).await {
        positions.insert(ack?);
    }
    producer.close().await?;
    println!(
        "producer: {} rows acknowledged at {} distinct positions",
        1000,
        positions.len()
    );
    Ok(())
}
