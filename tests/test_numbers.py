"""E.164 normalisation of the number forms BestSMS accepts."""

import pytest

from receiver.numbers import to_e164


@pytest.mark.parametrize("raw", ["+61410010001", "0061410010001", "61410010001", "0410010001", "410010001",
                                 "0410 010 001", "(04) 1001-0001", " +61 410 010 001 "])
def test_australian_forms_all_become_e164(raw):
    assert to_e164(raw, "AU") == "+61410010001"


def test_default_region_is_configurable():
    assert to_e164("021 777 909", "NZ") == "+6421777909"
    assert to_e164("+6421777909", "AU") == "+6421777909"  # an explicit country code wins over the region


@pytest.mark.parametrize("raw", ["Telstra", "1234", "BestSMS"])
def test_what_is_not_a_phone_number_is_kept(raw):
    assert to_e164(raw, "AU") == raw
