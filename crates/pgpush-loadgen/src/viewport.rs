//! The viewport scenario: every move a GeoJSON Point drawn from its sequence number, every subscriber a box of 1 % of the area drawn from its index, so any process knows what each subscriber must get.

/// [west, south, east, north] of the area moves fall in: a city, about 20 × 17 km.
const AREA: [f64; 4] = [4.75, 52.30, 5.05, 52.45];
/// A viewport's side as a share of the area's: 10 % × 10 % is 1 % of its surface.
const SIDE: f64 = 0.1;

/// A uniform number in [0, 1) from `seed` and `salt` (SplitMix64).
fn unit(seed: u64, salt: u64) -> f64 {
    let mut z = seed
        .wrapping_add(salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Where move `seq` goes: `[longitude, latitude]` in the area.
pub(crate) fn point(seq: u64) -> [f64; 2] {
    let [west, south, east, north] = AREA;
    [
        west + unit(seq, 1) * (east - west),
        south + unit(seq, 2) * (north - south),
    ]
}

/// Subscriber `index`'s viewport, `[west, south, east, north]`, inside the area.
pub(crate) fn viewport(index: usize) -> [f64; 4] {
    let [west, south, east, north] = AREA;
    let (width, height) = ((east - west) * SIDE, (north - south) * SIDE);
    let left = west + unit(index as u64, 3) * (east - west - width);
    let bottom = south + unit(index as u64, 4) * (north - south - height);
    // Six decimals, as a map would send them: the filter's text and the check here agree.
    [left, bottom, left + width, bottom + height].map(|x| (x * 1e6).round() / 1e6)
}

/// The `&filter=` of subscriber `index`'s subscribe URL.
pub(crate) fn filter_query(index: usize) -> String {
    let [west, south, east, north] = viewport(index);
    let filter =
        format!(r#"{{"path":"loc","op":"within","value":[{west},{south},{east},{north}]}}"#);
    format!(
        "&filter={}",
        form_urlencoded::byte_serialize(filter.as_bytes()).collect::<String>()
    )
}

/// The payload's `"loc"` member for move `seq` (after `{"seq":..,"t":..`).
pub(crate) fn loc_member(seq: u64) -> String {
    let [lon, lat] = point(seq);
    format!(r#","loc":{{"type":"Point","coordinates":[{lon},{lat}]}}"#)
}

/// The moves 1..=n, drawn once, to count what each subscriber must get.
#[derive(Debug)]
pub(crate) struct Moves {
    points: Vec<[f64; 2]>,
}

impl Moves {
    pub(crate) fn new(n: u64) -> Moves {
        Moves {
            points: (1..=n).map(point).collect(),
        }
    }

    /// How many of the first `published` moves lie in subscriber `index`'s viewport.
    pub(crate) fn inside(&self, index: usize, published: u64) -> u64 {
        let [west, south, east, north] = viewport(index);
        self.points
            .iter()
            .take(published as usize)
            .filter(|[lon, lat]| west <= *lon && *lon <= east && south <= *lat && *lat <= north)
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_viewport_holds_about_one_move_in_a_hundred() {
        let moves = Moves::new(100_000);
        let total: u64 = (0..100).map(|index| moves.inside(index, 100_000)).sum();
        let share = total as f64 / 100.0 / 100_000.0;
        assert!((0.008..0.012).contains(&share), "{share}");
        let [west, south, east, north] = viewport(7);
        assert!(AREA[0] <= west && east <= AREA[2] && AREA[1] <= south && north <= AREA[3]);
        assert!(filter_query(7).starts_with("&filter=%7B%22path%22"));
    }
}
