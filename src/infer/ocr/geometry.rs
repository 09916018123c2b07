//! Plane geometry the OCR chain needs between the detector's probability map
//! and the crops handed to the recogniser: minimum-area rectangles (what
//! OpenCV's `minAreaRect` returns, optionally grown by a distance, which is
//! how the DB "unclip" is reproduced), the corner orders rapidocr uses, and
//! its reading-order sort. Pure functions on `f64` points.

use imageproc::geometry::convex_hull;
use imageproc::point::Point;

/// A point `[x, y]` in pixels.
pub type Pt = [f64; 2];

/// A rotated rectangle: centre, unit vector along its first side, side lengths.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RotRect {
    pub center: Pt,
    pub axis: Pt,
    pub width: f64,
    pub height: f64,
}

impl RotRect {
    pub fn short_side(&self) -> f64 {
        self.width.min(self.height)
    }

    /// The four corners, in no particular order (like `cv2.boxPoints`).
    pub fn corners(&self) -> [Pt; 4] {
        let [ux, uy] = self.axis;
        let (vx, vy) = (-uy, ux);
        let (hw, hh) = (self.width / 2.0, self.height / 2.0);
        [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)].map(|(su, sv)| {
            [
                self.center[0] + su * hw * ux + sv * hh * vx,
                self.center[1] + su * hw * uy + sv * hh * vy,
            ]
        })
    }
}

/// The rectangle of least area around `points` after every point is grown
/// into a disc of radius `grow` (`grow = 0` is OpenCV's `minAreaRect`).
///
/// The grown shape is the Minkowski sum of the convex hull with a disc; its
/// width in any direction is the hull's width plus `2·grow`, and its straight
/// edges are parallel to the hull's, so the optimum is still found among the
/// hull's edge directions (rotating calipers). The hull comes from imageproc;
/// its own `min_area_rect` rounds the corners outward to integers and skips
/// the closing hull edge, which shifts DB boxes by up to a pixel.
pub fn min_area_rect(points: &[[i32; 2]], grow: f64) -> Option<RotRect> {
    let pts: Vec<Point<i32>> = points.iter().map(|p| Point::new(p[0], p[1])).collect();
    let hull: Vec<Pt> = convex_hull(pts)
        .into_iter()
        .map(|p| [f64::from(p.x), f64::from(p.y)])
        .collect();
    let first = *hull.first()?;
    let mut best: Option<(f64, RotRect)> = None;
    let n = hull.len();
    for i in 0..n.max(1) {
        let (a, b) = (hull[i], hull[(i + 1) % n]);
        let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
        let len = ex.hypot(ey);
        let axis = if len > 0.0 {
            [ex / len, ey / len]
        } else if n == 1 {
            [1.0, 0.0]
        } else {
            continue;
        };
        let r = extent_rect(&hull, axis, grow);
        let area = r.width * r.height;
        if best.is_none_or(|(a, _)| area < a) {
            best = Some((area, r));
        }
    }
    Some(best.map_or(
        RotRect {
            center: first,
            axis: [1.0, 0.0],
            width: 2.0 * grow,
            height: 2.0 * grow,
        },
        |(_, r)| r,
    ))
}

/// The rectangle aligned with `axis` that bounds `hull` grown by `grow`.
fn extent_rect(hull: &[Pt], axis: Pt, grow: f64) -> RotRect {
    let [ux, uy] = axis;
    let (vx, vy) = (-uy, ux);
    let (mut u0, mut u1, mut v0, mut v1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in hull {
        let u = p[0] * ux + p[1] * uy;
        let v = p[0] * vx + p[1] * vy;
        u0 = u0.min(u);
        u1 = u1.max(u);
        v0 = v0.min(v);
        v1 = v1.max(v);
    }
    let (cu, cv) = ((u0 + u1) / 2.0, (v0 + v1) / 2.0);
    RotRect {
        center: [cu * ux + cv * vx, cu * uy + cv * vy],
        axis,
        width: u1 - u0 + 2.0 * grow,
        height: v1 - v0 + 2.0 * grow,
    }
}

/// rapidocr's `get_mini_boxes` corner order: of the two left-most corners
/// (by x) the upper one first, then the upper right, lower right, lower left.
pub fn mini_box_order(mut c: [Pt; 4]) -> [Pt; 4] {
    c.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (i1, i4) = if c[1][1] > c[0][1] { (0, 1) } else { (1, 0) };
    let (i2, i3) = if c[3][1] > c[2][1] { (2, 3) } else { (3, 2) };
    [c[i1], c[i2], c[i3], c[i4]]
}

/// imutils' `order_points_clockwise` as rapidocr uses it: the two left-most
/// corners sorted by y give top-left and bottom-left, the two right-most
/// give top-right and bottom-right; result `[tl, tr, br, bl]`.
pub fn order_clockwise(mut c: [Pt; 4]) -> [Pt; 4] {
    c.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let mut left = [c[0], c[1]];
    let mut right = [c[2], c[3]];
    left.sort_by(|a, b| a[1].total_cmp(&b[1]));
    right.sort_by(|a, b| a[1].total_cmp(&b[1]));
    [left[0], right[0], right[1], left[1]]
}

/// Polygon area (shoelace, absolute) and perimeter, as shapely's
/// `Polygon.area` and `.length`.
pub fn area_perimeter(q: &[Pt; 4]) -> (f64, f64) {
    let mut twice = 0.0;
    let mut perim = 0.0;
    for i in 0..4 {
        let (a, b) = (q[i], q[(i + 1) % 4]);
        twice += a[0] * b[1] - b[0] * a[1];
        perim += (b[0] - a[0]).hypot(b[1] - a[1]);
    }
    (twice.abs() / 2.0, perim)
}

pub fn dist(a: Pt, b: Pt) -> f64 {
    (a[0] - b[0]).hypot(a[1] - b[1])
}

/// Reading order as rapidocr's `sorted_boxes`: by the first corner's (y, x),
/// then one bubble pass that puts boxes whose first corners are within 10 px
/// vertically into left-to-right order.
pub fn reading_order<T>(items: &mut [T], first_corner: impl Fn(&T) -> Pt) {
    items.sort_by(|a, b| {
        let (pa, pb) = (first_corner(a), first_corner(b));
        pa[1].total_cmp(&pb[1]).then(pa[0].total_cmp(&pb[0]))
    });
    for i in 0..items.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            let (a, b) = (first_corner(&items[j]), first_corner(&items[j + 1]));
            if (b[1] - a[1]).abs() < 10.0 && b[0] < a[0] {
                items.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn axis_aligned_rect_is_its_own_min_area_rect() {
        let pts = [[2, 3], [12, 3], [12, 8], [2, 8], [7, 5]];
        let r = min_area_rect(&pts, 0.0).unwrap();
        let (w, h) = (r.width.max(r.height), r.short_side());
        assert!(close(w, 10.0) && close(h, 5.0), "{r:?}");
        assert!(close(r.center[0], 7.0) && close(r.center[1], 5.5));
        let grown = min_area_rect(&pts, 1.5).unwrap();
        assert!(close(grown.short_side(), 8.0));
        assert!(close(grown.width * grown.height, 13.0 * 8.0));
    }

    #[test]
    fn rotated_rect_is_found_including_the_closing_hull_edge() {
        // A 45° square of side √2·4: corners at (4,0), (8,4), (4,8), (0,4).
        let pts = [[4, 0], [8, 4], [4, 8], [0, 4]];
        let r = min_area_rect(&pts, 0.0).unwrap();
        assert!(close(r.width * r.height, 32.0), "{r:?}");
        assert!(close(r.center[0], 4.0) && close(r.center[1], 4.0));
    }

    #[test]
    fn degenerate_inputs_give_thin_rects_not_panics() {
        assert!(min_area_rect(&[], 0.0).is_none());
        let one = min_area_rect(&[[3, 3]], 2.0).unwrap();
        assert!(close(one.width, 4.0) && close(one.height, 4.0));
        let line = min_area_rect(&[[0, 0], [5, 0], [10, 0]], 0.0).unwrap();
        assert!(close(line.short_side(), 0.0) && close(line.width.max(line.height), 10.0));
    }

    #[test]
    fn corner_orders_match_rapidocr() {
        let c = [[10.0, 20.0], [0.0, 0.0], [10.0, 0.0], [0.0, 20.0]];
        assert_eq!(
            order_clockwise(c),
            [[0.0, 0.0], [10.0, 0.0], [10.0, 20.0], [0.0, 20.0]]
        );
        assert_eq!(
            mini_box_order(c),
            [[0.0, 0.0], [10.0, 0.0], [10.0, 20.0], [0.0, 20.0]]
        );
    }

    #[test]
    fn reading_order_is_rows_then_left_to_right() {
        let mut v = vec![[50.0, 12.0], [5.0, 100.0], [0.0, 15.0], [300.0, 10.0]];
        reading_order(&mut v, |p| *p);
        assert_eq!(
            v,
            vec![[0.0, 15.0], [50.0, 12.0], [300.0, 10.0], [5.0, 100.0]]
        );
    }
}
