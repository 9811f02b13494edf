//! The demo "database": products 1 to 100 in a map, with the latency of a real query.
//!
//! It stands for whatever an application keeps its data in (Postgres, an ERP's API); the
//! point of the example is the cache in front of it (`products.rs`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What one query costs.
pub const QUERY_LATENCY: Duration = Duration::from_millis(20);
/// The seeded product ids are `1..=SEEDED`.
pub const SEEDED: u64 = 100;

/// A product, as stored and as answered: `{"id":1,"name":"...","priceCents":1999,"stock":5}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    /// The id.
    pub id: u64,
    /// The display name.
    pub name: String,
    /// The price in cents (integers: no floating-point money).
    pub price_cents: u64,
    /// Units in stock.
    pub stock: u32,
}

/// What a query can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// No product has this id.
    NotFound(u64),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::NotFound(id) => write!(f, "Product {id} not found"),
        }
    }
}

impl std::error::Error for DbError {}

/// The product table.
#[derive(Debug)]
pub struct Database {
    products: RwLock<HashMap<u64, Product>>,
    queries: AtomicU64,
}

const KINDS: [&str; 10] = [
    "Standard",
    "Ergonomic",
    "Compact",
    "Deluxe",
    "Wireless",
    "Classic",
    "Premium",
    "Eco",
    "Heavy-duty",
    "Portable",
];
const ITEMS: [&str; 10] = [
    "Desk",
    "Chair",
    "Monitor",
    "Keyboard",
    "Mouse",
    "Lamp",
    "Notebook",
    "Pen",
    "Stapler",
    "Whiteboard",
];

/// The seeded product `id` (1 ..= 100).
fn seed(id: u64) -> Product {
    let i = usize::try_from(id - 1).unwrap_or(0);
    Product {
        id,
        name: format!("{} {}", KINDS[(i / 10) % 10], ITEMS[i % 10]),
        price_cents: 1999 + (id - 1) * 250 % 10_000,
        stock: u32::try_from(id * 5 % 47).unwrap_or(0),
    }
}

impl Database {
    /// The table with products 1 to 100.
    pub fn seeded() -> Self {
        Self {
            products: RwLock::new((1..=SEEDED).map(|id| (id, seed(id))).collect()),
            queries: AtomicU64::new(0),
        }
    }

    /// How many queries ran (to see what the cache saves).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    async fn query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(QUERY_LATENCY).await;
    }

    /// `SELECT … WHERE id = ?`
    ///
    /// # Errors
    /// [`DbError::NotFound`].
    pub async fn find(&self, id: u64) -> Result<Product, DbError> {
        self.query().await;
        let table = self.products.read().unwrap_or_else(PoisonError::into_inner);
        table.get(&id).cloned().ok_or(DbError::NotFound(id))
    }

    /// `UPDATE … WHERE id = ?`: replaces an existing product.
    ///
    /// # Errors
    /// [`DbError::NotFound`].
    pub async fn update(&self, product: Product) -> Result<Product, DbError> {
        self.query().await;
        let mut table = self
            .products
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match table.get_mut(&product.id) {
            Some(row) => {
                *row = product.clone();
                Ok(product)
            }
            None => Err(DbError::NotFound(product.id)),
        }
    }

    /// `DELETE … WHERE id = ?`
    ///
    /// # Errors
    /// [`DbError::NotFound`].
    pub async fn delete(&self, id: u64) -> Result<(), DbError> {
        self.query().await;
        let mut table = self
            .products
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        table.remove(&id).map(drop).ok_or(DbError::NotFound(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_plausible() {
        assert_eq!(
            seed(1),
            Product {
                id: 1,
                name: "Standard Desk".into(),
                price_cents: 1999,
                stock: 5
            }
        );
        assert_eq!(seed(100).name, "Portable Whiteboard");
    }

    #[tokio::test]
    async fn update_and_delete_existing_rows_only() {
        let db = Database::seeded();
        let mut p = db.find(7).await.unwrap();
        p.stock = 0;
        assert_eq!(db.update(p.clone()).await.unwrap(), p);
        assert_eq!(db.find(7).await.unwrap().stock, 0);
        db.delete(7).await.unwrap();
        assert_eq!(db.find(7).await, Err(DbError::NotFound(7)));
        assert_eq!(db.update(p).await, Err(DbError::NotFound(7)));
        assert_eq!(db.delete(7).await, Err(DbError::NotFound(7)));
        assert_eq!(db.queries(), 7);
    }
}
