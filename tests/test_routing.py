"""
Tests for L{twisted_rp.http.routing}: which route serves a request.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.http.routing import Route, Router
from twisted_rp.pool import BackendPool


def route(
    name: str, hosts: tuple[str, ...] = (), prefix: str = "/", strip_prefix: bool = False
) -> Route:
    return Route(
        BackendPool(name, []),
        hosts=hosts,
        path_prefix=prefix,
        strip_prefix=strip_prefix,
        name=name,
    )


def chosen(router: Router, host: str, path: str) -> str | None:
    found = router.route(host, path)
    return None if found is None else found.name


class HostPrecedenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.router = Router(
            [
                route("any"),
                route("wildcard", ("*.example.com",)),
                route("exact", ("www.example.com",)),
            ]
        )

    def test_exact_beats_wildcard_and_any(self) -> None:
        self.assertEqual(chosen(self.router, "www.example.com", "/"), "exact")

    def test_wildcard_beats_any(self) -> None:
        self.assertEqual(chosen(self.router, "api.example.com", "/"), "wildcard")

    def test_wildcard_matches_deeper_subdomains(self) -> None:
        self.assertEqual(chosen(self.router, "a.b.example.com", "/"), "wildcard")

    def test_wildcard_does_not_match_the_domain_itself(self) -> None:
        self.assertEqual(chosen(self.router, "example.com", "/"), "any")

    def test_wildcard_does_not_match_a_suffix_without_dot(self) -> None:
        self.assertEqual(chosen(self.router, "badexample.com", "/"), "any")

    def test_any_host(self) -> None:
        self.assertEqual(chosen(self.router, "other.org", "/"), "any")
        self.assertEqual(chosen(self.router, "", "/"), "any")

    def test_no_route(self) -> None:
        router = Router([route("exact", ("www.example.com",))])
        self.assertIsNone(chosen(router, "other.org", "/"))
        self.assertIsNone(Router([]).route("www.example.com", "/"))

    def test_configured_hosts_case_insensitive_and_without_dot(self) -> None:
        router = Router([route("exact", ("WWW.Example.COM.",))])
        self.assertEqual(chosen(router, "www.example.com", "/"), "exact")

    def test_several_hosts(self) -> None:
        router = Router([route("two", ("a.example", "b.example"))])
        self.assertEqual(chosen(router, "b.example", "/"), "two")

    def test_host_precedence_before_path(self) -> None:
        """A more specific host wins even if another route has a longer prefix."""
        router = Router([route("any-long", prefix="/api/v1"), route("exact", ("h.example",))])
        self.assertEqual(chosen(router, "h.example", "/api/v1/x"), "exact")

    def test_falls_back_to_less_specific_host_when_path_does_not_match(self) -> None:
        router = Router([route("exact-api", ("h.example",), "/api"), route("any")])
        self.assertEqual(chosen(router, "h.example", "/other"), "any")
        self.assertEqual(chosen(router, "h.example", "/api/x"), "exact-api")

    def test_repeated_lookups_agree(self) -> None:
        for _ in range(3):
            self.assertEqual(chosen(self.router, "www.example.com", "/"), "exact")
            self.assertEqual(chosen(self.router, "api.example.com", "/"), "wildcard")


class PathTests(SynchronousTestCase):
    def test_longest_prefix_wins(self) -> None:
        router = Router([route("root"), route("api", prefix="/api"), route("v2", prefix="/api/v2")])
        self.assertEqual(chosen(router, "h", "/api/v2/users"), "v2")
        self.assertEqual(chosen(router, "h", "/api/v1/users"), "api")
        self.assertEqual(chosen(router, "h", "/static/x"), "root")

    def test_longest_prefix_regardless_of_order(self) -> None:
        router = Router([route("v2", prefix="/api/v2"), route("api", prefix="/api"), route("root")])
        self.assertEqual(chosen(router, "h", "/api/v2"), "v2")
        self.assertEqual(chosen(router, "h", "/api"), "api")

    def test_configuration_order_breaks_ties(self) -> None:
        router = Router([route("first", prefix="/a"), route("second", prefix="/a")])
        self.assertEqual(chosen(router, "h", "/a"), "first")

    def test_segment_boundary(self) -> None:
        api = route("api", prefix="/api")
        self.assertTrue(api.path_matches("/api"))
        self.assertTrue(api.path_matches("/api/"))
        self.assertTrue(api.path_matches("/api/users"))
        self.assertFalse(api.path_matches("/apiary"))
        self.assertFalse(api.path_matches("/ap"))
        self.assertFalse(api.path_matches("/"))

    def test_segment_boundary_through_router(self) -> None:
        router = Router([route("api", prefix="/api")])
        self.assertEqual(chosen(router, "h", "/api/x"), "api")
        self.assertIsNone(chosen(router, "h", "/apiary"))

    def test_prefix_with_trailing_slash(self) -> None:
        api = route("api", prefix="/api/")
        self.assertTrue(api.path_matches("/api/users"))
        self.assertTrue(api.path_matches("/api/"))
        self.assertFalse(api.path_matches("/apiary"))

    def test_root_prefix_matches_everything(self) -> None:
        self.assertTrue(route("root").path_matches("/anything/at/all"))


class RouteTargetTests(SynchronousTestCase):
    def test_agrees_with_route(self) -> None:
        """Routing by target (the path read only when it matters) chooses as by path."""
        router = Router(
            [
                route("any"),
                route("any-api", prefix="/api"),
                route("exact", ("www.example.com",)),
                route("exact-static", ("static.example.com",), prefix="/s"),
                route("wildcard", ("*.example.com",), prefix="/w"),
            ]
        )
        hosts = ["www.example.com", "static.example.com", "a.example.com", "other.org"]
        targets = [b"/", b"/api", b"/api/x?y=1", b"/s/x", b"/w", b"/w?q", b"/apiary", b"*"]
        for host in hosts:
            for target in targets:
                path = target.split(b"?")[0].decode()
                expected = router.route(host, path)
                self.assertIs(router.route_target(host, target), expected, (host, target))


class StripPrefixTests(SynchronousTestCase):
    def test_strips_prefix(self) -> None:
        api = route("api", prefix="/api", strip_prefix=True)
        self.assertEqual(api.backend_path(b"/api/users?page=2"), b"/users?page=2")

    def test_stripping_everything_leaves_root(self) -> None:
        api = route("api", prefix="/api", strip_prefix=True)
        self.assertEqual(api.backend_path(b"/api"), b"/")
        self.assertEqual(api.backend_path(b"/api/"), b"/")

    def test_query_right_after_prefix(self) -> None:
        api = route("api", prefix="/api", strip_prefix=True)
        self.assertEqual(api.backend_path(b"/api?x=1"), b"/?x=1")

    def test_prefix_with_trailing_slash(self) -> None:
        api = route("api", prefix="/api/", strip_prefix=True)
        self.assertEqual(api.backend_path(b"/api/users"), b"/users")

    def test_not_stripped_unless_asked(self) -> None:
        api = route("api", prefix="/api")
        self.assertEqual(api.backend_path(b"/api/users"), b"/api/users")

    def test_root_prefix_never_stripped(self) -> None:
        root = route("root", strip_prefix=True)
        self.assertEqual(root.backend_path(b"/users"), b"/users")
