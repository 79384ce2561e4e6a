-- A reply BestSMS sent without a sub account or department is billed to its message's: when the
-- message learns them (a later result, a poll, its registration), its replies that lack them
-- take them too (apply_reply does the same for a reply arriving after).
CREATE OR REPLACE FUNCTION replies_follow_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE replies SET sub_account = coalesce(sub_account, NEW.sub_account),
                       department = coalesce(department, NEW.department), updated_at = now()
    WHERE message_id = NEW.message_id
      AND ((sub_account IS NULL AND NEW.sub_account IS NOT NULL) OR (department IS NULL AND NEW.department IS NOT NULL));
    RETURN NULL;
END $$;
