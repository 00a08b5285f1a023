"""The provision component: the only writer of the trust configuration, behind the admin API."""
