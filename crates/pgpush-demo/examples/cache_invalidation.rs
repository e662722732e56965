//! Keeps `product` rows in memory, coherent with every change through `pgpush.watch_table`.
//!
//! Start pgpush (`cargo run --release --bin pgpush -- up`), then
//! `cargo run -p pgpush-demo --example cache_invalidation -- ws://127.0.0.1:8080 <database url>`
//! and, in psql, `UPDATE product SET price = price + 1 WHERE id = 1;`: the next read misses.

use std::time::Duration;

use pgpush_demo::cache::InvalidatingCache;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(edge), Some(database_url)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: cache_invalidation <ws://pgpush-node> <database url>");
    };
    let (client, connection) =
        tokio_postgres::connect(&database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS product (id int PRIMARY KEY, name text, price numeric);
             INSERT INTO product VALUES (1, 'teapot', 20) ON CONFLICT DO NOTHING;
             SELECT pgpush.watch_table('product', 'product_changed');",
        )
        .await?;
    let cache = InvalidatingCache::<String>::new();
    cache.follow(&edge, "product_changed", CancellationToken::new());
    if !cache.wait_live(Duration::from_secs(10)).await {
        anyhow::bail!("could not subscribe to product_changed on {edge}");
    }
    loop {
        let key = json!(1);
        let hit = cache.cached(&key).is_some();
        let row = cache
            .get(&key, || async {
                let row = client
                    .query_opt(
                        "SELECT name || ' costs ' || price FROM product WHERE id = 1",
                        &[],
                    )
                    .await?;
                Ok::<_, tokio_postgres::Error>(row.map(|row| row.get::<_, String>(0)))
            })
            .await?;
        let source = if hit { "cache" } else { "database" };
        println!(
            "product 1: {} (from the {source})",
            row.as_deref().map_or("gone", String::as_str)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
