"""
Authentication of the admin listener: a bearer token, or Basic credentials checked against
an htpasswd file (or carrying the token as password, for browsers).
"""

from __future__ import annotations

import hmac
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, IUsernamePassword, UsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.web.guard import BasicCredentialFactory, HTTPAuthSessionWrapper
from twisted.web.iweb import ICredentialFactory
from twisted.web.resource import IResource
from zope.interface import implementer

from twisted_rp.auth.basic import HtpasswdChecker


@implementer(ICredentialFactory)
class BearerCredentialFactory:
    """
    C{Authorization: Bearer TOKEN} (RFC 6750), turned into user name and password
    credentials (user C{token}) for L{AdminChecker}.
    """

    scheme = b"bearer"

    def getChallenge(self, request: object) -> dict[str, bytes]:
        return {}

    def decode(self, response: bytes, request: object) -> ICredentials:
        token = response.strip()
        if not token:
            raise LoginFailed("empty bearer token")
        return UsernamePassword(b"token", token)


@implementer(ICredentialsChecker)
class AdminChecker:
    """
    Accepts the token as password (any user name), else asks the htpasswd checker if any.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, token: str | None, users: HtpasswdChecker | None) -> None:
        self._token = None if token is None else token.encode("utf-8")
        self._users = users

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[Any]:
        password: bytes = credentials.password
        if self._token is not None and hmac.compare_digest(password, self._token):
            return succeed(credentials.username)
        if self._users is not None:
            return self._users.requestAvatarId(credentials)
        return fail(UnauthorizedLogin("wrong token"))


@implementer(IRealm)
class _Realm:
    def __init__(self, resource: IResource) -> None:
        self._resource = resource

    def requestAvatar(self, avatarId: object, mind: object, *interfaces: Any) -> Any:
        if IResource not in interfaces:
            raise NotImplementedError()
        return IResource, self._resource, lambda: None


def guarded(
    resource: IResource,
    token: str | None,
    users: HtpasswdChecker | None,
    realm: str,
) -> IResource:
    """
    C{resource} behind authentication: 401 with a C{Basic} (and, with a token, C{Bearer})
    challenge until the client sends the token or a user's credentials.
    """
    portal = Portal(_Realm(resource), [AdminChecker(token, users)])
    factories: list[ICredentialFactory] = [BasicCredentialFactory(realm.encode("utf-8"))]
    if token is not None:
        factories.append(BearerCredentialFactory())
    return HTTPAuthSessionWrapper(portal, factories)
