CREATE OR REPLACE FUNCTION ensure_message(p_message_id text, p_job_number text,
                                          p_sub_account text, p_department text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- Known, with nothing to fill in (every report after a message's first): one lookup.
    PERFORM FROM messages
    WHERE message_id = p_message_id
      AND (job_number IS NOT NULL OR p_job_number IS NULL)
      AND (sub_account IS NOT NULL OR p_sub_account IS NULL)
      AND (department IS NOT NULL OR p_department IS NULL);
    IF FOUND THEN
        RETURN;
    END IF;
    INSERT INTO messages (message_id, job_number, sub_account, department)
    VALUES (p_message_id, p_job_number, p_sub_account, p_department)
    ON CONFLICT (message_id) DO NOTHING;
    IF NOT FOUND THEN
        -- Lock the row only when there is something to fill in: a broadcast's webhooks all
        -- name the same message and must not queue behind each other.
        UPDATE messages SET job_number  = coalesce(job_number, p_job_number),
                            sub_account = coalesce(sub_account, p_sub_account),
                            department  = coalesce(department, p_department),
                            updated_at  = now()
        WHERE message_id = p_message_id
          AND ((job_number IS NULL AND p_job_number IS NOT NULL)
            OR (sub_account IS NULL AND p_sub_account IS NOT NULL)
            OR (department IS NULL AND p_department IS NOT NULL));
    END IF;
END $$;
