//! The plane geometry of a three-phase voltage set. Pure.
//!
//! Phase voltages are the distances from the load's neutral point to the corners of the line
//! triangle (the three line conductors). With a sound neutral that point sits at the source's
//! star point; with a broken one it wanders inside the triangle as the loads change, and its
//! distance from the star point is the displacement this module estimates.
//!
//! Where is the star point? The source's three EMFs are 120° apart whatever their magnitudes,
//! so the star point is the one point from which every side of the line triangle is seen under
//! 120°: the triangle's Fermat point ([`star_point`]). On a balanced source that is the centre;
//! when one source phase sags, the triangle shrinks on that side and the Fermat point stays
//! where the EMFs meet, while the centre moves a third of the sag towards it (a 25 % sag: 19 V,
//! which a test against the centre takes for a displaced neutral).

/// A point of the voltage plane, in volts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

impl Point {
    pub const fn new(x: f64, y: f64) -> Point {
        Point { x, y }
    }

    pub fn dist(self, o: Point) -> f64 {
        (self.x - o.x).hypot(self.y - o.y)
    }
}

/// The equilateral line triangle that fits three phase magnitudes, and the neutral point's
/// distance from its centre: the estimate when only magnitudes are measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EquilateralFit {
    /// The triangle's side: the line voltage the magnitudes imply.
    pub side: f64,
    /// The neutral point's distance from the triangle's centre, in volts.
    pub displacement: f64,
}

/// The point at distances `u` from the corners of an equilateral triangle of unknown side.
///
/// For a point at distances p, q, r from the corners of an equilateral triangle of side a,
/// 3(p⁴ + q⁴ + r⁴ + a⁴) = (p² + q² + r² + a²)², a quadratic in a² whose larger root is the
/// triangle for which the point lies nearer the centre than the corners. The sum of squared
/// distances from any point is a² + 3·d², with d its distance from the centre, which gives d.
/// `None` when no equilateral triangle has a point at those distances (the magnitudes are not
/// a displaced neutral on a balanced source at all) or a magnitude is not a positive number.
pub fn equilateral_fit(u: [f64; 3]) -> Option<EquilateralFit> {
    if u.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
        return None;
    }
    let s: f64 = u.iter().map(|v| v * v).sum();
    let q: f64 = u.iter().map(|v| v.powi(4)).sum();
    let disc = 3.0 * s * s - 6.0 * q;
    if disc < 0.0 {
        return None;
    }
    let root = disc.sqrt();
    let side = ((s + root) / 2.0).sqrt();
    let displacement = ((s - root).max(0.0) / 6.0).sqrt();
    Some(EquilateralFit { side, displacement })
}

/// The three angles at the neutral point between the phase voltages (L1-L2, L2-L3, L3-L1), in
/// degrees, derived from the magnitudes and a line voltage `line` by the law of cosines; `None`
/// where a pair of magnitudes and the side form no triangle. The seed's test: the angles of a
/// point inside the triangle sum to 360°.
pub fn angles_from_magnitudes(u: [f64; 3], line: f64) -> Option<[f64; 3]> {
    let mut out = [0.0; 3];
    for (k, angle) in out.iter_mut().enumerate() {
        let (a, b) = (u[k], u[(k + 1) % 3]);
        if !(a > 0.0 && b > 0.0) {
            return None;
        }
        let c = (a * a + b * b - line * line) / (2.0 * a * b);
        if !(-1.0..=1.0).contains(&c) {
            return None;
        }
        *angle = c.acos().to_degrees();
    }
    Some(out)
}

/// The equilateral-triangle bound, derived again (seed 001's formula is wrong).
///
/// On a balanced source of phase voltage Vp, a neutral point at distance ε·Vp from one corner
/// and inside the triangle lies on an arc whose middle, on the median, is at distance
/// Vp·√(ε² − 3ε + 3) from both other corners; along the arc one distance grows as the other
/// shrinks. So one of the other two phases is at most, and the other at least, that ratio of
/// Vp. The seed's √(4 + 12ε²)/(4ε) gives 0.978 at ε = 1.1 where the geometry gives 0.954: the
/// seed's check rejects the textbook broken neutral (253 V on one phase, 219 V on both others).
pub fn other_phases_ratio(epsilon: f64) -> f64 {
    (epsilon * epsilon - 3.0 * epsilon + 3.0).max(0.0).sqrt()
}

/// Seed 001's ratio, taken literally: Vp' / Vp = √(4 + 12ε²) / (4ε).
pub fn seed_ratio(epsilon: f64) -> f64 {
    (4.0 + 12.0 * epsilon * epsilon).sqrt() / (4.0 * epsilon)
}

/// The neutral point located from a measured line triangle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TriangleFix {
    /// Distance from the source's star point ([`star_point`]), volts.
    pub displacement: f64,
    /// Root-mean-square misfit of the phase magnitudes at the point found, volts: large when
    /// the five readings do not describe one point (a meter wrong, readings of different times).
    pub residual: f64,
    /// The point from the star point, volts, in the triangle's own frame (L1 at the origin, L2
    /// along the x axis): where it went from one sample to the next, while the triangle holds.
    pub offset: Point,
}

/// The neutral point at distances `phase` (U1, U2, U3) from the corners of the triangle with
/// sides `line` (U12, U23, U31), by least squares: the exact solution of the two linear
/// equations that differences of the circle equations give, refined by Gauss-Newton on the
/// distance errors. `None` when the sides form no triangle or a value is not a positive number.
pub fn locate_neutral(phase: [f64; 3], line: [f64; 3]) -> Option<TriangleFix> {
    if phase.iter().chain(line.iter()).any(|v| !(v.is_finite() && *v > 0.0)) {
        return None;
    }
    let [u12, u23, u31] = line;
    // Corners: L1 at the origin, L2 on the x axis, L3 above.
    let cx = (u12 * u12 + u31 * u31 - u23 * u23) / (2.0 * u12);
    let cy2 = u31 * u31 - cx * cx;
    if cy2 <= 1e-9 * u31 * u31 {
        return None;
    }
    let corners = [Point::new(0.0, 0.0), Point::new(u12, 0.0), Point::new(cx, cy2.sqrt())];
    let star = star_point(corners)?;
    let [p1, p2, p3] = phase;
    // |P-A|² - |P-B|² and |P-A|² - |P-C|² are linear in P.
    let x = (p1 * p1 - p2 * p2 + u12 * u12) / (2.0 * u12);
    let cy = corners[2].y;
    let y = (p1 * p1 - p3 * p3 + cx * cx + cy * cy - 2.0 * cx * x) / (2.0 * cy);
    let mut p = Point::new(x, y);
    for _ in 0..4 {
        // Gauss-Newton on r_k = |P - C_k| - U_k.
        let (mut a11, mut a12, mut a22, mut b1, mut b2) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (c, u) in corners.iter().zip(phase) {
            let d = p.dist(*c).max(1e-9);
            let (jx, jy) = ((p.x - c.x) / d, (p.y - c.y) / d);
            let r = d - u;
            a11 += jx * jx;
            a12 += jx * jy;
            a22 += jy * jy;
            b1 += jx * r;
            b2 += jy * r;
        }
        let det = a11 * a22 - a12 * a12;
        if det.abs() < 1e-12 {
            break;
        }
        p.x -= (a22 * b1 - a12 * b2) / det;
        p.y -= (a11 * b2 - a12 * b1) / det;
    }
    let residual =
        (corners.iter().zip(phase).map(|(c, u)| (p.dist(*c) - u).powi(2)).sum::<f64>() / 3.0).sqrt();
    Some(TriangleFix { displacement: p.dist(star), residual, offset: Point::new(p.x - star.x, p.y - star.y) })
}

/// The source's star point in a line triangle: its Fermat point, the point from which each
/// side is seen under 120° (three EMFs 120° apart meet there, whatever their magnitudes). In
/// barycentric coordinates it is a / sin(A + 60°) : b / sin(B + 60°) : c / sin(C + 60°), with
/// a the side opposite corner A and A its angle. `None` when an angle reaches 120° (then no
/// such point exists inside: no three-phase source gives that triangle).
pub fn star_point(corners: [Point; 3]) -> Option<Point> {
    let [a, b, c] = corners;
    let sides = [b.dist(c), c.dist(a), a.dist(b)];
    let mut weights = [0.0; 3];
    for k in 0..3 {
        let (opposite, s1, s2) = (sides[k], sides[(k + 1) % 3], sides[(k + 2) % 3]);
        if !(opposite > 0.0 && s1 > 0.0 && s2 > 0.0) {
            return None;
        }
        let cos = ((s1 * s1 + s2 * s2 - opposite * opposite) / (2.0 * s1 * s2)).clamp(-1.0, 1.0);
        let angle = cos.acos();
        if angle >= 2.0 * std::f64::consts::FRAC_PI_3 {
            return None;
        }
        weights[k] = opposite / (angle + std::f64::consts::FRAC_PI_3).sin();
    }
    let total: f64 = weights.iter().sum();
    if !(total.is_finite() && total > 0.0) {
        return None;
    }
    Some(Point::new(
        (weights[0] * a.x + weights[1] * b.x + weights[2] * c.x) / total,
        (weights[0] * a.y + weights[1] * b.y + weights[2] * c.y) / total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VP: f64 = 230.0;

    /// The corners of a balanced source of phase voltage VP, centre at the origin.
    fn corners() -> [Point; 3] {
        let a = |deg: f64| Point::new(VP * deg.to_radians().cos(), VP * deg.to_radians().sin());
        [a(90.0), a(-30.0), a(210.0)]
    }

    fn magnitudes(n: Point) -> [f64; 3] {
        corners().map(|c| n.dist(c))
    }

    fn lines() -> [f64; 3] {
        let c = corners();
        [c[0].dist(c[1]), c[1].dist(c[2]), c[2].dist(c[0])]
    }

    #[test]
    fn equilateral_fit_of_a_sound_neutral_is_the_nominal_triangle_and_no_displacement() {
        let f = equilateral_fit([VP; 3]).unwrap();
        assert!((f.side - VP * 3f64.sqrt()).abs() < 1e-9);
        assert!(f.displacement < 1e-6);
    }

    #[test]
    fn equilateral_fit_recovers_known_displacements_anywhere_inside_the_triangle() {
        for (x, y) in [(10.0, 5.0), (-40.0, 25.0), (0.0, -80.0), (60.0, 60.0), (-100.0, -20.0)] {
            let n = Point::new(x, y);
            let f = equilateral_fit(magnitudes(n)).unwrap();
            assert!((f.displacement - n.dist(Point::new(0.0, 0.0))).abs() < 1e-6, "{x},{y}: {f:?}");
            assert!((f.side - VP * 3f64.sqrt()).abs() < 1e-6, "{x},{y}: {f:?}");
        }
    }

    #[test]
    fn equilateral_fit_refuses_magnitudes_no_point_can_have() {
        // At one corner (0 V) the other two must both be the side.
        assert!(equilateral_fit([400.0, 200.0, 1.0]).is_none());
        assert!(equilateral_fit([230.0, f64::NAN, 230.0]).is_none());
        assert!(equilateral_fit([230.0, 0.0, 230.0]).is_none());
    }

    #[test]
    fn angles_from_magnitudes_sum_to_360_inside_and_not_for_a_single_phase_sag() {
        let line = VP * 3f64.sqrt();
        let inside = angles_from_magnitudes(magnitudes(Point::new(30.0, -20.0)), line).unwrap();
        assert!((inside.iter().sum::<f64>() - 360.0).abs() < 1e-6);
        // One phase 10 % low on a sound neutral: 131.4 + 120 + 131.4 degrees.
        let sag = angles_from_magnitudes([0.9 * VP, VP, VP], line).unwrap();
        assert!((sag.iter().sum::<f64>() - 382.8).abs() < 0.1, "{sag:?}");
    }

    #[test]
    fn other_phases_ratio_matches_the_geometry_and_the_seed_formula_does_not() {
        // The neutral on the median, 1.1·Vp from L1: both others at the derived ratio.
        let eps = 1.1;
        let n = Point::new(0.0, VP - eps * VP);
        let u = magnitudes(n);
        assert!((u[0] - eps * VP).abs() < 1e-9);
        assert!((u[1] / VP - other_phases_ratio(eps)).abs() < 1e-9);
        assert!((u[2] / VP - other_phases_ratio(eps)).abs() < 1e-9);
        assert!((other_phases_ratio(eps) - 0.9539).abs() < 1e-4);
        assert!((seed_ratio(eps) - 0.9780).abs() < 1e-4);
        // Anywhere else on that arc, one is above the ratio and the other below.
        for deg in [-10.0f64, -5.0, 5.0, 20.0] {
            let r = eps * VP;
            let a = (270.0 + deg).to_radians();
            let n = Point::new(r * a.cos(), VP + r * a.sin());
            let u = magnitudes(n);
            let lim = other_phases_ratio(eps) * VP;
            assert!(u[1].min(u[2]) <= lim + 1e-9 && u[1].max(u[2]) >= lim - 1e-9, "{deg}: {u:?}");
        }
        assert!((other_phases_ratio(1.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn locate_neutral_finds_known_points_from_the_line_triangle() {
        for (x, y) in [(0.0, 0.0), (25.0, -10.0), (-120.0, 40.0), (5.0, 150.0)] {
            let n = Point::new(x, y);
            let f = locate_neutral(magnitudes(n), lines()).unwrap();
            assert!((f.displacement - n.dist(Point::new(0.0, 0.0))).abs() < 1e-6, "{x},{y}: {f:?}");
            assert!(f.residual < 1e-6);
        }
    }

    #[test]
    fn locate_neutral_reports_misfit_for_readings_that_disagree() {
        let mut u = magnitudes(Point::new(20.0, 0.0));
        u[0] += 15.0;
        let f = locate_neutral(u, lines()).unwrap();
        assert!(f.residual > 3.0, "{f:?}");
        assert!(locate_neutral(u, [400.0, 100.0, 100.0]).is_none(), "degenerate triangle");
    }

    #[test]
    fn the_star_point_of_a_balanced_source_is_the_centre() {
        let s = star_point(corners()).unwrap();
        assert!(s.dist(Point::new(0.0, 0.0)) < 1e-9, "{s:?}");
    }

    #[test]
    fn the_star_point_stays_where_the_emfs_meet_whatever_their_magnitudes() {
        // EMFs 120° apart from the origin, of any lengths: every side is seen under 120° from
        // the origin, so the Fermat point is the origin.
        for r in [[0.75, 1.0, 1.0], [1.0, 0.8, 1.1], [1.05, 0.95, 0.9], [0.6, 1.0, 1.0]] {
            let c = [90.0f64, -30.0, 210.0]
                .map(|deg| deg.to_radians())
                .iter()
                .zip(r)
                .map(|(a, k)| Point::new(k * VP * a.cos(), k * VP * a.sin()))
                .collect::<Vec<_>>();
            let s = star_point([c[0], c[1], c[2]]).unwrap();
            assert!(s.dist(Point::new(0.0, 0.0)) < 1e-9, "{r:?}: {s:?}");
        }
        // A triangle with an angle of 120° or more has no star point.
        let flat = [Point::new(0.0, 0.0), Point::new(400.0, 0.0), Point::new(200.0, 100.0)];
        assert!(star_point(flat).is_none());
    }

    #[test]
    fn locate_neutral_measures_a_single_phase_sag_as_no_displacement() {
        // The source's L1 10 % or 25 % low, sound neutral: the centre of the shrunken triangle
        // is 8 V or 19 V from the star point; the displacement is measured from the star point.
        for sag in [0.9, 0.75] {
            let mut c = corners();
            c[0] = Point::new(0.0, sag * VP);
            let line = [c[0].dist(c[1]), c[1].dist(c[2]), c[2].dist(c[0])];
            let u = c.map(|k| k.dist(Point::new(0.0, 0.0)));
            let f = locate_neutral(u, line).unwrap();
            assert!(f.displacement < 1e-6, "{sag}: {f:?}");
        }
    }

    #[test]
    fn locate_neutral_measures_a_displaced_neutral_on_a_sagging_source_from_the_star_point() {
        let mut c = corners();
        c[0] = Point::new(0.0, 0.8 * VP);
        let line = [c[0].dist(c[1]), c[1].dist(c[2]), c[2].dist(c[0])];
        for n in [Point::new(30.0, 0.0), Point::new(0.0, -25.0), Point::new(-15.0, 40.0)] {
            let u = c.map(|k| k.dist(n));
            let f = locate_neutral(u, line).unwrap();
            assert!((f.displacement - n.dist(Point::new(0.0, 0.0))).abs() < 1e-6, "{n:?}: {f:?}");
        }
    }
}
