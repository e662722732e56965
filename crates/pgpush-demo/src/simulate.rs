//! The people simulator: walkers and cyclists wandering around a city centre, one `UPDATE` each.

use std::time::{Duration, Instant};

use rand::RngExt;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::DemoError;

const METRES_PER_DEGREE: f64 = 111_320.0;
/// The shortest time between two UPDATE statements; faster rates move several people in each.
const MIN_TICK: Duration = Duration::from_millis(10);

/// Where people wander: a circle on the map.
#[derive(Debug, Clone, Copy)]
pub struct Area {
    /// Centre latitude, degrees.
    pub latitude: f64,
    /// Centre longitude, degrees.
    pub longitude: f64,
    /// Radius, metres.
    pub radius_m: f64,
}

impl Default for Area {
    /// Central Amsterdam, 2 km around Dam Square.
    fn default() -> Area {
        Area {
            latitude: 52.3731,
            longitude: 4.8926,
            radius_m: 2_000.0,
        }
    }
}

/// What `pgpush demo simulate` does.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// People to move (rows are inserted when the table has fewer).
    pub people: usize,
    /// Moves per second, over all people.
    pub rate: f64,
    /// How much faster than real time people move (10: a walker covers 14 m per second).
    pub speedup: f64,
    /// Where they are.
    pub area: Area,
    /// Stop after this many moves (`None`: until shutdown).
    pub moves: Option<u64>,
}

/// One simulated person.
#[derive(Debug)]
struct Walker {
    id: i32,
    latitude: f64,
    longitude: f64,
    /// Radians, 0 = north, clockwise.
    heading: f64,
    /// Metres per second.
    speed: f64,
    last_move: Instant,
}

impl Walker {
    fn step(&mut self, area: &Area, speedup: f64, rng: &mut impl rand::Rng) {
        let elapsed = self.last_move.elapsed().as_secs_f64().clamp(0.05, 30.0);
        self.last_move = Instant::now();
        // Streets bend: drift the heading a little, and turn back towards the centre at the edge.
        self.heading += rng.random_range(-0.5..0.5);
        let (north, east) = offset_m(area, self.latitude, self.longitude);
        if (north * north + east * east).sqrt() > area.radius_m {
            self.heading = (-east).atan2(-north) + rng.random_range(-0.3..0.3);
        }
        let distance = self.speed * elapsed * speedup;
        self.latitude += distance * self.heading.cos() / METRES_PER_DEGREE;
        self.longitude +=
            distance * self.heading.sin() / (METRES_PER_DEGREE * self.latitude.to_radians().cos());
    }
}

/// (north, east) in metres from the area's centre.
fn offset_m(area: &Area, latitude: f64, longitude: f64) -> (f64, f64) {
    let north = (latitude - area.latitude) * METRES_PER_DEGREE;
    let east = (longitude - area.longitude) * METRES_PER_DEGREE * area.latitude.to_radians().cos();
    (north, east)
}

const NAMES: &[&str] = &[
    "Ada", "Bram", "Chloé", "Daan", "Emma", "Finn", "Greta", "Hugo", "Iris", "Jasper", "Kiki",
    "Lars", "Mila", "Noah", "Olivia", "Pim", "Quinn", "Roos", "Sem", "Tess", "Umar", "Vera",
    "Wout", "Xander", "Yara", "Zoë",
];

/// Moves `options.people` people, `options.rate` moves per second, until `shutdown` or
/// `options.moves`; returns how many moves were made.
pub async fn simulate(
    client: &Client,
    options: &SimulateOptions,
    shutdown: CancellationToken,
) -> Result<u64, DemoError> {
    let mut walkers = ensure_people(client, options).await?;
    if walkers.is_empty() || options.rate <= 0.0 {
        return Ok(0);
    }
    // One UPDATE per tick moves everyone due (the trigger still publishes one event per row),
    // so a thousand moves a second are a hundred statements, not a thousand round trips.
    let update = client
        .prepare(
            "UPDATE person SET loc = ST_SetSRID(ST_MakePoint(m.lon, m.lat), 4326)::geography
             FROM unnest($1::int[], $2::float8[], $3::float8[]) AS m(id, lon, lat)
             WHERE person.id = m.id",
        )
        .await?;
    let tick = Duration::from_secs_f64(1.0 / options.rate).max(MIN_TICK);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut moves = 0u64;
    let mut next = 0;
    while options.moves.is_none_or(|limit| moves < limit) {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        // Moves due by now at the rate, at least one, at most one per person per statement.
        let due = (started.elapsed().as_secs_f64() * options.rate) as u64 + 1;
        let limit = options.moves.unwrap_or(u64::MAX);
        let batch = due
            .min(limit)
            .saturating_sub(moves)
            .clamp(1, walkers.len() as u64) as usize;
        let (mut ids, mut lons, mut lats) = (
            Vec::with_capacity(batch),
            Vec::with_capacity(batch),
            Vec::with_capacity(batch),
        );
        // The thread-local generator is not Send: it lives only until the statement is built.
        {
            let mut rng = rand::rng();
            let count = walkers.len();
            for _ in 0..batch {
                let walker = &mut walkers[next];
                next = (next + 1) % count;
                walker.step(&options.area, options.speedup, &mut rng);
                ids.push(walker.id);
                lons.push(walker.longitude);
                lats.push(walker.latitude);
            }
        }
        client.execute(&update, &[&ids, &lons, &lats]).await?;
        moves += batch as u64;
    }
    Ok(moves)
}

/// The first `options.people` people, inserting the missing ones and placing the unplaced.
async fn ensure_people(
    client: &Client,
    options: &SimulateOptions,
) -> Result<Vec<Walker>, DemoError> {
    let existing: i64 = client
        .query_one("SELECT count(*) FROM person", &[])
        .await?
        .get(0);
    // The thread-local generator is not Send: draw everything before the next await.
    let missing: Vec<(String, (f64, f64))> = (existing.max(0) as usize..options.people)
        .map(|index| {
            let name = match index / NAMES.len() {
                0 => NAMES[index].to_owned(),
                round => format!("{} {}", NAMES[index % NAMES.len()], round + 1),
            };
            (name, random_point(&options.area, &mut rand::rng()))
        })
        .collect();
    let names: Vec<&str> = missing.iter().map(|(name, _)| name.as_str()).collect();
    let latitudes: Vec<f64> = missing.iter().map(|(_, (latitude, _))| *latitude).collect();
    let longitudes: Vec<f64> = missing
        .iter()
        .map(|(_, (_, longitude))| *longitude)
        .collect();
    client
        .execute(
            "INSERT INTO person (name, loc)
             SELECT p.name, ST_SetSRID(ST_MakePoint(p.lon, p.lat), 4326)::geography
             FROM unnest($1::text[], $2::float8[], $3::float8[]) WITH ORDINALITY AS p(name, lon, lat, n)
             ORDER BY p.n",
            &[&names, &longitudes, &latitudes],
        )
        .await?;
    let limit = i64::try_from(options.people).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT id, ST_Y(loc::geometry), ST_X(loc::geometry) FROM person ORDER BY id LIMIT $1",
            &[&limit],
        )
        .await?;
    let mut rng = rand::rng();
    Ok(rows
        .iter()
        .map(|row| {
            let (latitude, longitude) =
                match (row.get::<_, Option<f64>>(1), row.get::<_, Option<f64>>(2)) {
                    (Some(latitude), Some(longitude)) => (latitude, longitude),
                    _ => random_point(&options.area, &mut rng),
                };
            Walker {
                id: row.get(0),
                latitude,
                longitude,
                heading: rng.random_range(0.0..std::f64::consts::TAU),
                // Walkers and cyclists.
                speed: if rng.random_bool(0.3) {
                    rng.random_range(4.0..6.0)
                } else {
                    rng.random_range(1.1..1.6)
                },
                last_move: Instant::now(),
            }
        })
        .collect())
}

fn random_point(area: &Area, rng: &mut impl rand::Rng) -> (f64, f64) {
    let distance = area.radius_m * rng.random::<f64>().sqrt();
    let bearing = rng.random_range(0.0..std::f64::consts::TAU);
    let latitude = area.latitude + distance * bearing.cos() / METRES_PER_DEGREE;
    let longitude = area.longitude
        + distance * bearing.sin() / (METRES_PER_DEGREE * area.latitude.to_radians().cos());
    (latitude, longitude)
}
